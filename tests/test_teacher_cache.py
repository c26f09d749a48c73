"""The teacher-logit cache: exact (same student weights as with the online teacher), keyed, built once and
shared by trials training side by side."""

import copy
import dataclasses
import io
import os
import threading
import time
from pathlib import Path

import fakedata
import pyarrow.fs as pafs
import pytest
import torch
from conftest import tiny_spec

from banray.catalog import data

from banray.catalog.data import load_splits
from banray.catalog.losses import get_objective
from banray.catalog.models import MODELS, build_model
from banray.spec import DistillSpec, parse_spec
from banray.storage import SWEEP_FILES
from banray.training import teacher_cache
from banray.training.checkpoint import ModelIdentity
from banray.training.tasks import make_task
from banray.training.teacher import OnlineTeacher

WRN = {"arch": "wrn", "kwargs": {"depth": 10, "widen_factor": 1}}
WRN_IDENTITY = ModelIdentity(**WRN, revision=MODELS.revision("wrn"), num_classes=10, input_shape=[3, 32, 32])
CNN_IDENTITY = ModelIdentity(arch="cnn", kwargs={"width": 8}, revision=1, num_classes=4, input_shape=[1, 8, 8])


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    fakedata.write_cifar10(root)
    return root


def cifar_spec(root, **overrides):
    return parse_spec(tiny_spec(data={"dataset": "cifar10", "root": str(root)}, model=WRN, **overrides))


def wrn(seed):
    torch.manual_seed(seed)
    return build_model("wrn", num_classes=10, input_shape=(3, 32, 32), **WRN["kwargs"])


def train_student(task, teacher, epochs=2):
    student = wrn(seed=1)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)

    def step(loss):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    losses = [
        task.train_epoch(student, teacher, get_objective("ban"), DistillSpec(temperature=2.0).loss_params(), step, torch.device("cpu"), e)
        for e in range(1, epochs + 1)
    ]
    return student.state_dict(), losses


def test_a_student_taught_from_the_cache_is_the_one_taught_online(cifar_root, tmp_path):
    spec = cifar_spec(cifar_root)
    task = make_task(spec.data, spec.train, seed=3)
    assert task.splits.augmentation != "none"  # random crops and flips: views differ per epoch
    teacher = wrn(seed=0).eval()
    cache = teacher_cache.CachedTeacher(teacher, WRN_IDENTITY, task.splits, str(tmp_path), 2, dtype="float32")
    online, online_losses = train_student(task, OnlineTeacher(teacher))
    cached, cached_losses = train_student(task, cache)
    assert cache.built == [1, 2]  # each epoch's views were built by this trial when it needed them
    assert cached_losses == online_losses
    assert all(torch.equal(online[name], cached[name]) for name in online)


def test_float16_cache_holds_the_logits_to_half_precision(tmp_path):
    splits = load_splits("synthetic", "", 0.2, 0)
    torch.manual_seed(0)
    teacher = build_model("cnn", num_classes=4, input_shape=(1, 8, 8), width=8).eval()
    cache = teacher_cache.CachedTeacher(teacher, CNN_IDENTITY, splits, str(tmp_path), epochs=5, dtype="float16")
    table = cache.for_epoch(3)
    assert cache.for_epoch(5) is table and cache.built == [None]
    assert table.dtype == torch.float16 and table.shape == (len(splits.train), 4)
    with torch.inference_mode():
        exact = teacher(splits.train.inputs)
    torch.testing.assert_close(table.float(), exact, rtol=1e-3, atol=1e-3)
    # No augmentation: one pass serves every epoch.
    assert [p.name for p in sorted(Path(cache.uri).glob("*.pt"))] == ["epoch-all.pt"]


def test_a_top_k_cache_keeps_the_k_largest_logits_and_renormalises_over_them(cifar_root, tmp_path):
    spec = cifar_spec(cifar_root)
    task = make_task(spec.data, spec.train, seed=3)
    teacher = wrn(seed=0).eval()
    full = teacher_cache.CachedTeacher(teacher, WRN_IDENTITY, task.splits, str(tmp_path), 2, dtype="float32")
    top3 = teacher_cache.CachedTeacher(teacher, WRN_IDENTITY, task.splits, str(tmp_path), 2, dtype="float32", top_k=3)
    exact, table = full.for_epoch(2), top3.for_epoch(2)
    assert table.shape == exact.shape == (len(task.splits.train), 10)
    kept = exact.topk(3, dim=1)
    assert torch.equal(table.topk(3, dim=1).indices, kept.indices)
    assert torch.equal(table.gather(1, kept.indices), kept.values)
    for temperature in (1.0, 4.0, 20.0):
        renormalised = torch.zeros_like(exact).scatter_(1, kept.indices, (kept.values / temperature).softmax(dim=1))
        probabilities = (table / temperature).softmax(dim=1)
        torch.testing.assert_close(probabilities, renormalised)
        assert probabilities.scatter(1, kept.indices, 0.0).max() == 0  # the tail weighs nothing
    stored = torch.load(Path(top3.uri) / "epoch-0002.pt", weights_only=True)  # 3 of 10 logits and their classes
    assert stored["values"].shape == stored["indices"].shape == (len(task.splits.train), 3)
    assert (stored["values"].dtype, stored["indices"].dtype, stored["classes"]) == (torch.float32, torch.int16, 10)


def test_the_key_changes_with_the_teacher_its_views_and_their_storage(cifar_root):
    teacher = wrn(seed=0)
    splits = load_splits("cifar10", str(cifar_root), 0.2, 0)

    def folder(model=teacher, identity=WRN_IDENTITY, views=splits, dtype="float16", top_k=None):
        return teacher_cache.cache_key(model, identity, views, dtype, top_k).folder()

    key = folder()
    assert key == folder(model=wrn(seed=0), views=load_splits("cifar10", str(cifar_root), 0.2, 0))
    unaugmented = dataclasses.replace(splits, augment=None)
    other_draws = dataclasses.replace(splits, seed=splits.seed + 1)
    other_hash = dataclasses.replace(splits, augment=copy.copy(splits.augment))
    other_hash.augment.policy = "crop-pad4-reflect+hflip/another-hash"  # the same crops drawn by another function
    changed = [
        folder(model=wrn(seed=1)),  # other weights
        folder(identity=WRN_IDENTITY.model_copy(update={"revision": WRN_IDENTITY.revision + 1})),  # other code
        folder(identity=WRN_IDENTITY.model_copy(update={"arch": "preact_resnet"})),
        folder(identity=WRN_IDENTITY.model_copy(update={"kwargs": {"depth": 10, "widen_factor": 2}})),
        folder(views=unaugmented),  # other augmentation policy
        folder(views=other_draws),  # the same split and policy, other draws
        folder(views=other_hash),
        folder(views=load_splits("cifar10", str(cifar_root), 0.2, 1)),  # other split and draws
        folder(views=dataclasses.replace(splits, split_hash="0123456789abcdef")),  # other split, same seed
        folder(views=dataclasses.replace(splits, dataset="cifar100")),
        folder(dtype="float32"),
        folder(top_k=3),
    ]
    assert key not in changed and len(set(changed)) == len(changed)


def test_a_cache_is_not_read_for_another_split_revision_or_augmentation_policy(cifar_root, tmp_path, monkeypatch):
    """The split of one data seed drawn in another order (another scikit-learn) is another split."""
    root = str(tmp_path)

    def reads(splits, identity=WRN_IDENTITY) -> bool:
        cache = teacher_cache.CachedTeacher(wrn(seed=0), identity, splits, root, epochs=1, dtype="float32")
        cache.for_epoch(1)
        return cache.built == []

    splits = load_splits("cifar10", str(cifar_root), 0.2, 0)
    assert not reads(splits) and reads(splits)  # built once, then read
    assert not reads(splits, WRN_IDENTITY.model_copy(update={"revision": WRN_IDENTITY.revision + 1}))
    assert not reads(dataclasses.replace(splits, augment=None))
    real_split = data.stratified_split

    def reordered(labels, test_size, seed):
        kept, held_out = real_split(labels, test_size, seed)
        return kept[::-1].copy(), held_out

    monkeypatch.setattr(data, "stratified_split", reordered)
    reordered_splits = load_splits("cifar10", str(cifar_root), 0.2, 0)
    assert reordered_splits.split_hash != splits.split_hash
    assert not reads(reordered_splits)
    assert len(list(tmp_path.iterdir())) == 4  # one folder each


def slow_counted_builds(monkeypatch, seconds=0.3):
    """Record which thread built which epoch, each build taking at least `seconds`."""
    builds = []
    real = teacher_cache._teacher_logits

    def counting(teacher, splits, epoch, *args):
        builds.append((threading.current_thread().name, epoch))
        time.sleep(seconds)
        return real(teacher, splits, epoch, *args)

    monkeypatch.setattr(teacher_cache, "_teacher_logits", counting)
    return builds


def trials_side_by_side(spec, cifar_root, root: str, epochs: int, trials: int) -> dict[str, list[torch.Tensor]]:
    """Each trial's tables of every epoch, the trials reading the cache at `root` in threads."""
    teacher = wrn(seed=0)
    tables: dict[str, list[torch.Tensor]] = {}
    start = threading.Barrier(trials)

    def trial():
        # Each trial has its own splits, as each Train worker loads its own.
        splits = load_splits("cifar10", str(cifar_root), spec.data.val_fraction, spec.data.seed)
        cache = teacher_cache.CachedTeacher(teacher, WRN_IDENTITY, splits, root, epochs, storage=SWEEP_FILES)
        start.wait()
        tables[threading.current_thread().name] = [cache.for_epoch(e).clone() for e in range(1, epochs + 1)]

    threads = [threading.Thread(target=trial, name=f"trial{i}") for i in range(trials)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first, *others = tables.values()
    assert len(tables) == trials
    assert all(torch.equal(a, b) for other in others for a, b in zip(first, other))
    return tables


def test_trials_side_by_side_split_the_build_and_build_each_epoch_once(cifar_root, tmp_path, monkeypatch):
    spec = cifar_spec(cifar_root)
    builds = slow_counted_builds(monkeypatch)
    epochs = 6
    trials_side_by_side(spec, cifar_root, str(tmp_path), epochs, trials=3)
    assert sorted(epoch for _, epoch in builds) == list(range(1, epochs + 1))  # each epoch built once
    assert len({name for name, _ in builds}) > 1  # by more than one trial
    folder = next(tmp_path.iterdir())
    assert sorted(p.name for p in folder.iterdir()) == [f"epoch-{e:04d}.pt" for e in range(1, epochs + 1)]


def test_the_cache_on_object_storage_is_shared_and_left_clean(s3_endpoint, cifar_root, monkeypatch):
    spec = cifar_spec(cifar_root)
    builds = slow_counted_builds(monkeypatch)
    epochs, root = 4, "s3://banray/teacher-cache"
    tables = trials_side_by_side(spec, cifar_root, root, epochs, trials=3)
    # Claims on S3 are not exclusive: two trials may build one epoch, never a different one.
    assert {epoch for _, epoch in builds} == set(range(1, epochs + 1)) and len({n for n, _ in builds}) > 1
    splits = load_splits("cifar10", str(cifar_root), spec.data.val_fraction, spec.data.seed)
    later = teacher_cache.CachedTeacher(wrn(seed=0), WRN_IDENTITY, splits, root, epochs, storage=SWEEP_FILES)
    assert torch.equal(later.for_epoch(epochs), tables["trial0"][-1]) and later.built == []
    fs, path = pafs.FileSystem.from_uri(later.uri)
    names = sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(path)))
    assert names == [f"epoch-{e:04d}.pt" for e in range(1, epochs + 1)]  # no claims or partial files left


def test_a_stale_claim_is_taken_over_and_a_fresh_one_waited_for(tmp_path, monkeypatch):
    splits = load_splits("synthetic", "", 0.2, 0)
    torch.manual_seed(0)
    teacher = build_model("cnn", num_classes=4, input_shape=(1, 8, 8), width=8)
    cache = teacher_cache.CachedTeacher(teacher, CNN_IDENTITY, splits, str(tmp_path), epochs=3)
    claim = Path(cache.uri) / ".claim-epoch-all.pt"
    claim.parent.mkdir(parents=True)
    claim.touch()
    os.utime(claim, (time.time() - 2 * cache.MIN_STALE_S,) * 2)  # its builder died long ago
    assert cache.for_epoch(1).shape == (384, 4) and cache.built == [None]  # the training split of 480

    # A fresh claim: its builder is at work, so a reader waits for the file instead of building it.
    waiting = teacher_cache.CachedTeacher(teacher, CNN_IDENTITY, splits, str(tmp_path / "other"), epochs=3)
    folder = waiting.folder
    assert folder.claim("epoch-all.pt", stale_after_s=60)
    expected = torch.full((384, 4), 7.0, dtype=torch.float16)  # not what the teacher says: proves who wrote it

    def builder_finishes():
        buffer = io.BytesIO()
        torch.save(expected, buffer)
        folder.write_bytes("epoch-all.pt", buffer.getvalue())
        folder.release("epoch-all.pt")

    threading.Timer(0.5, builder_finishes).start()
    assert torch.equal(waiting.for_epoch(1), expected) and waiting.built == []


def test_augmentation_depends_only_on_data_seed_epoch_and_sample(cifar_root):
    def views(seed, epoch, batch_size=50):
        splits = load_splits("cifar10", str(cifar_root), 0.2, seed)
        return torch.cat([splits.train_views(p, epoch) for p in torch.arange(len(splits.train)).split(batch_size)])

    first = views(seed=0, epoch=1)
    assert torch.equal(first, views(seed=0, epoch=1, batch_size=17))  # per sample, not per batch
    assert not torch.equal(first, views(seed=0, epoch=2))
    splits = load_splits("cifar10", str(cifar_root), 0.2, 0)
    assert not torch.equal(first, splits.inputs(splits.train, slice(None)))
