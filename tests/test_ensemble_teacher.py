"""The ensemble teacher (distill.teacher_from: ensemble): generation k learns from log(mean_i softmax(z_i)) of
generations 0 … k − 1 of its chain, online and cached alike, each member checked by its checkpoint's record."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, tiny_spec

import fakedata
from banray.catalog.data import load_splits
from banray.catalog.losses import get_objective, teacher_probs
from banray.catalog.models import MODELS, build_model
from banray.commands import plan
from banray.files import LOCAL
from banray.spec import DistillSpec, SpecError, TrialSettings, parse_spec
from banray.training import checkpoint, loop, teacher_cache
from banray.training.checkpoint import ModelIdentity
from banray.training.local import run_trial, trial_settings
from banray.training.tasks import make_task
from banray.training.teacher import Ensemble, OnlineTeacher

CNN = {"arch": "cnn", "kwargs": {"width": 8}}


def cnn(seed: int, classes: int = 4, input_shape=(1, 8, 8)) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn", num_classes=classes, input_shape=input_shape, **CNN["kwargs"]).eval()


def identity(classes: int = 4, input_shape=(1, 8, 8)) -> ModelIdentity:
    return ModelIdentity(**CNN, revision=MODELS.revision("cnn"), num_classes=classes, input_shape=list(input_shape))


def numpy_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def numpy_target(member_logits: list[np.ndarray], temperature: float) -> np.ndarray:
    """The ensemble teacher's target, in numpy alone: the log of the members' averaged softmax as its logits,
    then their softmax at `temperature`."""
    logits = np.log(np.mean([numpy_softmax(z) for z in member_logits], axis=0))
    return numpy_softmax(logits / temperature)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_online_and_cached_ensemble_teachers_give_the_log_of_the_averaged_softmax(tmp_path, temperature):
    splits = load_splits("synthetic", "", 0.2, 0)
    members = [cnn(seed) for seed in (0, 1, 2)]
    x = splits.train.inputs
    with torch.inference_mode():
        member_logits = [member(x).double().numpy() for member in members]
    expected = numpy_target(member_logits, temperature)
    if temperature == 1.0:  # at T = 1 the target is exactly the averaged softmax
        np.testing.assert_allclose(expected, np.mean([numpy_softmax(z) for z in member_logits], axis=0), rtol=1e-12)
    ensemble = Ensemble(members)
    cached = teacher_cache.CachedTeacher(ensemble, [identity()] * 3, splits, str(tmp_path), epochs=1, dtype="float32")
    cached.start_epoch(1)
    for teacher_logits in (OnlineTeacher(ensemble).logits(x), cached.logits(x, torch.arange(len(x)))):
        np.testing.assert_allclose(teacher_probs(teacher_logits, temperature).double().numpy(), expected,
                                   rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    fakedata.write_cifar10(root)
    return root


def train_student(task, teacher, epochs=2):
    student = cnn(seed=9, classes=10, input_shape=(3, 32, 32)).train()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)

    def step(loss):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    params = DistillSpec(temperature=2.0).loss_params()
    losses = [task.train_epoch(student, teacher, get_objective("ban"), params, step, torch.device("cpu"), epoch)
              for epoch in range(1, epochs + 1)]
    return student.state_dict(), losses


def test_a_student_of_a_cached_ensemble_is_the_one_taught_online(cifar_root, tmp_path):
    spec = parse_spec(tiny_spec(data={"dataset": "cifar10", "root": str(cifar_root)}, model=CNN))
    task = make_task(spec.data, spec.train, seed=3)
    assert task.splits.augmentation != "none"  # every epoch its own views: the cache holds the ensemble's per view
    ensemble = Ensemble([cnn(seed, 10, (3, 32, 32)) for seed in (0, 1)])
    members = [identity(10, (3, 32, 32))] * 2
    cache = teacher_cache.CachedTeacher(ensemble, members, task.splits, str(tmp_path), 2, dtype="float32")
    online, online_losses = train_student(task, OnlineTeacher(ensemble))
    cached, cached_losses = train_student(task, cache)
    assert cache.built == [1, 2]
    assert cached_losses == online_losses
    assert all(torch.equal(online[name], cached[name]) for name in online)


def test_the_cache_key_names_every_member_in_order():
    splits = load_splits("synthetic", "", 0.2, 0)
    first, second = cnn(0), cnn(1)

    def folder(teacher, identities):
        return teacher_cache.cache_key(teacher, identities, splits, "float32").folder()

    key = folder(Ensemble([first, second]), [identity()] * 2)
    assert key == folder(Ensemble([cnn(0), cnn(1)]), [identity()] * 2)  # the same weights, loaded again
    changed = [
        folder(Ensemble([first, cnn(2)]), [identity()] * 2),  # another last member
        folder(Ensemble([cnn(2), second]), [identity()] * 2),  # another first member
        folder(Ensemble([second, first]), [identity()] * 2),  # the same members in another order
        folder(Ensemble([first, second, cnn(2)]), [identity()] * 3),  # one member more
        folder(Ensemble([first, second]), [identity().model_copy(update={"revision": 99}), identity()]),
        folder(first, identity()),  # its first member alone
    ]
    assert key not in changed and len(set(changed)) == len(changed)
    assert folder(first, identity()) == folder(first, [identity()])  # a teacher is an ensemble of one's key


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Generations 0 and 1 of an ensemble-taught chain, trained through the core (`banray trial`'s path)."""
    out = tmp_path_factory.mktemp("trials")
    spec = parse_spec(tiny_spec(generations=2, **{"train.epochs": 1, "distill.teacher_from": "ensemble"}))
    teacher = run_trial(trial_settings(spec, 0, 0, 0, None), out / "gen0", torch.device("cpu")).checkpoint
    student = trial_settings(spec, 0, 1, 0, teacher, [teacher])
    return spec, [teacher, run_trial(student, out / "gen1", torch.device("cpu")).checkpoint]


def test_generation_two_learns_from_both_earlier_generations_online_and_cached_alike(chain, tmp_path):
    spec, members = chain
    online = trial_settings(spec, 0, 2, 0, members[-1], members)
    # The same trial with its teacher's logits read from the cache (float32: exact), in the chain's spec hash.
    cached = online.model_copy(update={"distill": online.distill.model_copy(update={"teacher": "cached",
                                                                                    "cache_dtype": "float32"}),
                                       "teacher_cache": str(tmp_path / "cache")})
    rows = {}
    for how, settings in (("online", online), ("cached", cached)):
        rows[how] = []
        best = run_trial(settings, tmp_path / how, torch.device("cpu"), on_epoch=rows[how].append).checkpoint
    assert [row["train_loss"] for row in rows["online"]] == [row["train_loss"] for row in rows["cached"]]
    record = checkpoint.read_record(best)
    references = [checkpoint.read_record(member).as_teacher() for member in members]
    assert record.generation == 2 and record.teachers == references and record.teacher == references[-1]


def test_every_member_is_checked_as_the_generation_it_stands_for(chain):
    spec, members = chain
    wrong = trial_settings(spec, 0, 2, 0, members[1], [members[1], members[1]])  # generation 1 standing for 0
    task = make_task(wrong.data, wrong.train, seed=wrong.seed)
    with pytest.raises(checkpoint.TeacherMismatch, match=f"checkpoint {members[1]}: its metadata has generation=1, "
                                                         "expected 0"):
        loop.load_teacher(wrong, task, torch.device("cpu"), LOCAL)


def test_a_trials_settings_name_one_member_per_earlier_generation(chain):
    spec, members = chain
    settings = spec.generation_settings(0, 2, members[1], "main", members)
    assert settings["teacher_checkpoints"] == members
    assert settings["teacher_models"] == [spec.model.model_dump(mode="json")] * 2
    fields = {**settings, "trial": 0, "seed": 1}
    del fields["seed_root"]
    assert [generation for generation, _, _ in TrialSettings.model_validate(fields).teachers()] == [0, 1]
    for bad in ({"teacher_checkpoints": members[:1], "teacher_models": settings["teacher_models"][:1]},
                {"teacher_checkpoints": members[::-1]}):
        with pytest.raises(ValueError, match="teacher_checkpoints: "):
            TrialSettings.model_validate({**fields, **bad})


@pytest.mark.parametrize("distill, expected", [
    ({"teacher_from": "all"}, "s.yaml: distill.teacher_from: 'all' is not allowed: input should be 'previous' or "
                              "'ensemble'"),
    ({"teacher_from": {"choice": ["previous", "ensemble"]}}, "s.yaml: distill.teacher_from: a search range or mapping "
                                                             "is not allowed here"),
])
def test_a_bad_teacher_from_is_one_line_naming_the_field(distill, expected):
    with pytest.raises(SpecError) as caught:
        parse_spec(tiny_spec(distill=distill), "s.yaml")
    assert len(caught.value.lines) == 1 and caught.value.lines[0].startswith(expected), caught.value.lines


def test_an_ensemble_teacher_is_refused_for_language_models():
    with pytest.raises(SpecError) as caught:
        parse_spec(tiny_spec(data={"dataset": "ptb"}, model={"arch": "lstm_lm"}, search={"metric": "val_nll"},
                             distill={"objective": "ban+l", "teacher_from": "ensemble"}), "s.yaml")
    assert caught.value.lines == [
        "s.yaml: distill.teacher_from: 'ensemble' is not allowed for a language model dataset (banray averages no "
        "language models' per-token softmax over the vocabulary); allowed: previous"]


def test_the_teacher_is_part_of_the_spec_hash_and_the_plan():
    previous, ensemble = (parse_spec(tiny_spec(**{"distill.teacher_from": how})) for how in ("previous", "ensemble"))
    assert previous.spec_hash() != ensemble.spec_hash()
    assert not any("teacher_from" in line for line in plan.describe(previous))
    assert any(line.startswith("  teacher of generation k ≥ 1 (distill.teacher_from: ensemble): the ensemble of "
                               "generations 0 … k−1") for line in plan.describe(ensemble))


def banray_trial(spec, folder, *arguments) -> subprocess.CompletedProcess:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True)))
    return subprocess.run([sys.executable, "-m", "banray", "trial", str(path), *arguments], cwd=folder,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)


def test_banray_trial_trains_an_ensemble_student_of_every_member_given(chain, tmp_path):
    spec, members = chain
    done = banray_trial(spec, tmp_path, "--chain", "0", "--generation", "2", "--teacher", members[0],
                        "--teacher", members[1])
    assert done.returncode == 0, done.stderr[-3000:]
    best = done.stdout.strip().splitlines()[-1].rpartition("checkpoint ")[2]
    assert [reference.generation for reference in checkpoint.read_record(best).teachers] == [0, 1]


@pytest.mark.parametrize("teachers, expected", [
    (1, "--teacher: given 1 time(s), but with distill.teacher_from 'ensemble' generation 2 learns from "
        "generations 0..1: give --teacher once for each, in generation order"),
    (0, "--teacher: given 0 time(s), but with distill.teacher_from 'ensemble' generation 2"),
])
def test_banray_trial_of_an_ensemble_student_wants_every_member(chain, tmp_path, teachers, expected):
    spec, members = chain
    arguments = [argument for member in members[:teachers] for argument in ("--teacher", member)]
    done = banray_trial(spec, tmp_path, "--chain", "0", "--generation", "2", *arguments)
    assert done.returncode == 2 and done.stderr.startswith(f"error: {expected}"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "trials").exists()
