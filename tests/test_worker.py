"""The worker loop on synthetic data, through a real TorchTrainer in Ray Train's local mode."""

import math
import threading

import pytest
import ray.train
import torch
from ray.train.torch import TorchTrainer

from banray.catalog.data import load_splits
from banray.catalog.models import build_model
from banray.files import LOCAL
from banray.spec import TrialSettings, parse_spec
from banray.training import checkpoint, loop
from banray.training.loop import train_loop
from banray.training.tasks import make_task
from banray.trial import wire
from banray.trial.sessions import train_loop_per_worker
from conftest import tiny_spec


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The worker loop runs in this process (Train's local mode) and sets torch to its one thread; the tests
    train teachers here at that thread count too (rounding depends on it), and later test files get theirs back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fit(spec, tmp_path, generation=0, teacher_checkpoint=None, teacher_cache=None):
    settings = {**spec.generation_settings(0, generation, teacher_checkpoint), "trial": 0, "seed": 7,
                "teacher_cache": teacher_cache}
    del settings["seed_root"]
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=wire.worker_config(TrialSettings.model_validate(settings), 1, None),
        scaling_config=ray.train.ScalingConfig(num_workers=0),  # local mode: runs in this process
        run_config=ray.train.RunConfig(name=f"worker-gen{generation}", storage_path=str(tmp_path / "ray")),
    )
    return trainer.fit()


class RecordingSession:
    """The worker loop's session in this process, keeping every report (Train's local mode keeps only the last)."""

    rank, world_size, storage, node_id = 0, 1, LOCAL, "node-1"

    def __init__(self):
        self.reports = []

    def device(self):
        return torch.device("cpu")

    def prepare_model(self, model):
        return model

    def restored(self):
        return None

    def report(self, metrics, directory):
        self.reports.append(metrics)


def reports(spec, generation=0, teacher_checkpoint=None):
    settings = {**spec.generation_settings(0, generation, teacher_checkpoint), "trial": 0, "seed": 7}
    del settings["seed_root"]
    session = RecordingSession()
    train_loop(TrialSettings.model_validate(settings), session)
    return session.reports


def save_teacher(spec, directory, trained: bool, **metadata_overrides):
    splits = load_splits("synthetic", "", 0.2, 0)
    torch.manual_seed(0)
    model = build_model("cnn", num_classes=4, input_shape=(1, 8, 8), width=8)
    if trained:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for batch in torch.randperm(len(splits.train)).split(32):
            x, y = splits.train.inputs[batch], splits.train.labels[batch]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    task = make_task(spec.chain_data(0), spec.train)
    record = checkpoint.CheckpointRecord(
        arch="cnn", kwargs={"width": 8}, revision=1, num_classes=4, input_shape=[1, 8, 8], sweep=spec.name,
        spec_hash=spec.spec_hash(), chain=0, generation=0, arm="main", dataset="synthetic",
        split_hash=task.split_hash, trial=1, seed=3, objective="ce", teacher=None, node_id="node-1", epoch=1,
        # Measured on its chain's own validation split, the one it was selected on.
        val_error=task.score(model, "val").error, val_nll=1.0,
    ).model_copy(update=metadata_overrides)
    directory.mkdir()
    checkpoint.save(directory, model, record)
    return str(directory), record


def test_generation_zero_learns_the_labels_and_reports_every_epoch(tmp_path):
    spec = parse_spec(tiny_spec(**{"train.epochs": 3}))
    result = fit(spec, tmp_path)
    assert result.metrics["epoch"] == 3
    assert result.metrics["val_error"] < 0.1
    assert set(result.metrics) >= {"lr", "train_loss", "loss/ce", "val_error", "val_nll"}
    rows = reports(spec)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert not any("teacher_val_error" in row for row in rows)  # no teacher in generation 0


def test_student_learns_from_the_teacher_not_the_labels(tmp_path):
    spec = parse_spec(tiny_spec(**{"train.epochs": 2}))
    good, good_meta = save_teacher(spec, tmp_path / "good", trained=True)
    result = fit(spec, tmp_path, generation=1, teacher_checkpoint=good)
    assert "loss/teacher_ce" in result.metrics and "loss/ce" not in result.metrics  # BAN: no label term
    assert result.metrics["val_error"] < 0.1
    first, second = reports(spec, generation=1, teacher_checkpoint=good)
    # The first epoch's report carries it: the frozen teacher, in eval mode, scores as it was selected.
    assert first["teacher_val_error"] == pytest.approx(good_meta.val_error) and "teacher_val_error" not in second

    # A teacher that knows nothing (untrained) teaches nothing: the labels never reach a BAN student.
    bad, bad_meta = save_teacher(spec, tmp_path / "untrained", trained=False)
    result = fit(spec, tmp_path, generation=1, teacher_checkpoint=bad)
    assert result.metrics["val_error"] > 0.4


def test_teacher_with_foreign_metadata_is_refused(tmp_path):
    spec = parse_spec(tiny_spec())
    foreign, _ = save_teacher(spec, tmp_path / "foreign", trained=False, spec_hash="0123456789abcdef")
    with pytest.raises(Exception, match="has spec_hash='0123456789abcdef', expected"):
        fit(spec, tmp_path, generation=1, teacher_checkpoint=foreign)


def test_cached_teacher_trains_the_same_student_as_the_online_one(tmp_path):
    online_spec = parse_spec(tiny_spec(**{"train.epochs": 2}))
    good, _ = save_teacher(online_spec, tmp_path / "good", trained=True)
    online = fit(online_spec, tmp_path, generation=1, teacher_checkpoint=good)
    cached_spec = parse_spec(tiny_spec(**{"train.epochs": 2}, distill={"objective": "ban", "teacher": "cached",
                                                                      "cache_dtype": "float32"}))
    # The spec hash differs (the teacher source is part of it), so the teacher is saved for that spec.
    good, _ = save_teacher(cached_spec, tmp_path / "good-cached", trained=True)
    cache_root = tmp_path / "teacher-cache"
    cached = fit(cached_spec, tmp_path, generation=1, teacher_checkpoint=good,
                       teacher_cache=str(cache_root))
    assert [p.name for p in cache_root.glob("*/*.pt")] == ["epoch-all.pt"]  # no augmentation: one pass
    for key in ("train_loss", "val_error", "val_nll"):
        assert cached.metrics[key] == online.metrics[key]


def test_a_top_k_cached_teacher_reaches_the_worker(tmp_path):
    spec = parse_spec(tiny_spec(**{"train.epochs": 2}, distill={"objective": "ban", "teacher": "cached",
                                                                "cache_top_k": 2}))
    good, _ = save_teacher(spec, tmp_path / "good", trained=True)
    cache_root = tmp_path / "teacher-cache"
    result = fit(spec, tmp_path, generation=1, teacher_checkpoint=good, teacher_cache=str(cache_root))
    (stored_file,) = cache_root.glob("*/epoch-all.pt")
    assert torch.load(stored_file, weights_only=True)["values"].shape[1] == 2  # 2 of the 4 classes' logits
    assert math.isfinite(result.metrics["train_loss"]) and 0 <= result.metrics["val_error"] <= 1


def test_checkpoints_are_kept_for_the_best_epoch_the_last_and_every_interval(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: clock[0])
    policy = loop.CheckpointPolicy(every_s=10, best=None)
    chosen = []
    # (validation metric, seconds the epoch took); epochs 1-6
    for epoch, (value, seconds) in enumerate([(0.5, 1), (0.4, 1), (0.45, 1), (0.4, 1), (0.6, 10), (0.7, 1)], 1):
        clock[0] += seconds
        if policy.wants(value, last_epoch=epoch == 6):
            best = policy.best_with(value, epoch, {"val_error": value, "val_nll": 1.0})
            policy.saved(best, f"ckpt-{epoch}")
            chosen.append(epoch)
    # 1 and 2 improve, 3 is worse, 4 ties (the later epoch of a tie is the best, as Ray keeps it), 5 is due
    # after 10 s without a checkpoint, 6 is the last.
    assert chosen == [1, 2, 4, 5, 6]
    assert policy.best == {"value": 0.4, "epoch": 4, "val_error": 0.4, "val_nll": 1.0, "checkpoint": "ckpt-4"}


def test_a_restarted_trial_knows_its_best_epoch_from_the_checkpoint():
    saved_best = {"value": 0.3, "epoch": 7, "val_error": 0.3, "val_nll": 0.9, "checkpoint": None}
    # The restored checkpoint was the best itself (its own URI was not known when it was written).
    assert loop.CheckpointPolicy(60, saved_best, "s3://b/ckpt-7").best["checkpoint"] == "s3://b/ckpt-7"
    earlier = {**saved_best, "checkpoint": "s3://b/ckpt-5", "epoch": 5}
    assert loop.CheckpointPolicy(60, earlier, "s3://b/ckpt-9").best["checkpoint"] == "s3://b/ckpt-5"
    assert not loop.CheckpointPolicy(60, earlier).wants(0.31, last_epoch=False)


def test_a_worker_of_several_cpus_given_as_a_float_trains_on_that_many_threads():
    spec = parse_spec(tiny_spec(**{"train.epochs": 1}))
    settings = {**spec.generation_settings(0, 0, None), "trial": 0, "seed": 7}
    del settings["seed_root"]
    train_loop(TrialSettings.model_validate(settings), RecordingSession(), cpus_per_worker=2.0)  # as the spec holds it
    assert torch.get_num_threads() == 2


def test_a_checkpoint_uri_that_comes_later_reaches_the_next_state_and_the_summary(monkeypatch):
    """On a warm host a report returns a Future of its checkpoint's URI and the loop trains on; the best
    epoch's URI, once known, reaches the next checkpoint's training state and the trial's summary."""
    from concurrent.futures import Future

    monkeypatch.setattr(loop, "epoch_improves", lambda value, best: best is None)  # epoch 1 stays the best
    states = []

    class LaterSession(RecordingSession):
        def report(self, metrics, directory):
            self.reports.append(metrics)
            if directory is None:
                return None
            states.append(torch.load(f"{directory}/{checkpoint.TRAINING_STATE_FILE}", weights_only=True)["best"])
            uri = Future()
            threading.Timer(0.2, uri.set_result, [f"file:///storage/epoch-{metrics['epoch']}"]).start()
            return uri  # before the URI is known, as a warm host's session does

    spec = parse_spec(tiny_spec(**{"train.epochs": 3, "train.checkpoint_every_s": 0}))  # every epoch
    settings = {**spec.generation_settings(0, 0, None), "trial": 0, "seed": 7}
    del settings["seed_root"]
    summary = train_loop(TrialSettings.model_validate(settings), LaterSession())
    assert summary.best_epoch == 1 and summary.checkpoint == "file:///storage/epoch-1"
    assert [best["checkpoint"] for best in states] == [None, "file:///storage/epoch-1", "file:///storage/epoch-1"]
