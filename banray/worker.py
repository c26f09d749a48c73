"""The worker loop: one trial's training, on a Ray Train worker (TorchTrainer, Train V2) or in the Tune
trial's own process (banray.session hides which).

It trains one trial's student for the spec's epochs, with a frozen teacher from generation ≥ 1
(eval mode, no grad, not in the optimizer), evaluates on the validation split every epoch, and reports
metrics every epoch; a checkpoint goes with them when the validation metric is at least as good as the
best so far, at the last epoch, and otherwise every `train.checkpoint_every_s` seconds. Rank 0 writes
checkpoints; the reports reach MLflow from the group's process (banray.trial_runs), never from here.

Each checkpoint also holds the training state (epoch, optimizer, lr schedule, RNG states, the best epoch
so far): when Ray Train restarts a lost worker group, Tune a crashed trial, or a resumed sweep an
interrupted trial, the loop goes on from the last checkpoint as if nothing had happened. A non-finite
training loss ends the trial: the loop returns the reason, which the trial reports as its failure.
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from torch import nn

from banray import checkpoint, teacher_cache
from banray.losses import get_objective
from banray.storage import with_retries
from banray.models import build_model
from banray.session import Session, TrainSession, checkpoint_folder
from banray.spec import TrainSpec, TrialSettings
from banray.tasks import make_task, use_channels_last


def make_optimizer(parameters, train: TrainSpec) -> torch.optim.Optimizer:
    if train.optimizer == "sgd":
        return torch.optim.SGD(
            parameters, lr=train.lr, momentum=train.momentum, nesterov=train.nesterov, weight_decay=train.weight_decay
        )
    optimizer_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[train.optimizer]
    return optimizer_class(parameters, lr=train.lr, weight_decay=train.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, train: TrainSpec):
    """A per-epoch learning-rate schedule; 'plateau' steps on the validation metric."""
    if train.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train.epochs)
    if train.lr_schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=train.lr_milestones, gamma=train.lr_gamma)
    if train.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=train.lr_gamma, patience=0,
            threshold=train.lr_plateau_threshold, threshold_mode="abs",
        )
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def fast_path_student(student: nn.Module, train: TrainSpec, device, input_shape: tuple[int, ...]) -> nn.Module:
    """The student in the memory format and compiled form the spec asks for on `device`."""
    if use_channels_last(train, device) and len(input_shape) == 3:
        student = student.to(memory_format=torch.channels_last)
    if train.compile:
        student.compile()  # in place: the state dict keeps its names, so checkpoints stay loadable
    return student


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


TRAINING_STATE_FILE = "training_state.pt"


def training_state(epoch: int, optimizer, scheduler) -> dict[str, Any]:
    """What besides the weights a restarted worker needs to go on exactly: plain data only, so it loads
    with weights_only=True (numpy's RNG state as lists)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "epoch": epoch,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "numpy_rng": [kind, keys.tolist(), position, has_gauss, cached],
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def restore_training_state(state: dict[str, Any], optimizer, scheduler) -> int:
    """Put back a saved training state; returns the epoch it was saved after."""
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    kind, keys, position, has_gauss, cached = state["numpy_rng"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["epoch"]


def load_latest(resumed: ray.train.Checkpoint) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model weights, training state) of the run's latest checkpoint (read through the run's retrying
    storage filesystem)."""
    with resumed.as_directory() as directory:
        folder = Path(directory)
        return tuple(  # a damaged file is a BadCheckpoint at once, not a failure the trial retries
            checkpoint.decode_tensors(resumed.path, (folder / name).read_bytes(), name)
            for name in (checkpoint.WEIGHTS_FILE, TRAINING_STATE_FILE)
        )


def non_finite_terms(term_means: dict[str, float]) -> str | None:
    bad = {name: value for name, value in term_means.items() if not math.isfinite(value)}
    return ", ".join(f"{name} = {value}" for name, value in bad.items()) or None


def load_teacher(settings: TrialSettings, num_classes: int, device: torch.device) -> tuple[nn.Module, dict]:
    """The previous generation's best model, checked by its metadata and frozen. A broken checkpoint
    (checkpoint.BadCheckpoint) or another model than planned (TeacherMismatch) fails at once; only storage
    errors while fetching it are retried."""
    if settings.teacher_model is None:
        raise ValueError(f"trial settings of generation {settings.generation} name a teacher checkpoint "
                         "but not the teacher's model (teacher_model)")
    expected = {
        "sweep": settings.sweep,
        "spec_hash": settings.spec_hash,
        "chain": settings.chain,
        "generation": settings.generation - 1,
        "arm": "main",  # never the control arm's teacher′
        "num_classes": num_classes,
        "arch": settings.teacher_model.arch,  # the spec's model of generation - 1
        "kwargs": settings.teacher_model.kwargs,  # compared as JSON: the metadata went through it
    }
    teacher, metadata = with_retries(
        f"loading teacher {settings.teacher_checkpoint}",
        lambda: checkpoint.load(settings.teacher_checkpoint, expected=expected),
    )
    teacher.to(device).eval().requires_grad_(False)
    return teacher, metadata


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _quiet_train_reports() -> None:
    """Train V2 logs every report at INFO under a logger named after its source file, outside the
    "ray.train" hierarchy that RunConfig.logging_config filters; banray logs metrics to MLflow instead."""
    from ray.train.v2._internal.execution import context as train_context

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """The TorchTrainer's function: the worker loop on a Ray Train worker."""
    _quiet_train_reports()
    return train_loop(config, TrainSession())


class CheckpointPolicy:
    """When an epoch is checkpointed: whenever the validation metric is at least as good as the best so far
    (the best epoch's weights are never lost), at the last epoch, and otherwise once `every_s` seconds have passed
    since the last one (a restart loses at most that much training). It keeps the best epoch's record, which each checkpoint's
    training state carries too, so a restarted trial still knows it."""

    def __init__(self, every_s: float, best: dict[str, Any] | None, restored_uri: str | None = None):
        self.every_s = every_s
        self.last = time.monotonic()
        if best is not None and best["checkpoint"] is None:  # the restored checkpoint was itself the best
            best = {**best, "checkpoint": restored_uri}
        self.best = best  # metric value, epoch, val_error, val_nll, checkpoint URI (None where not known)

    def improves(self, value: float) -> bool:
        # A tie goes to the later epoch, as in Ray's checkpoint managers, which keep that one.
        return self.best is None or value <= self.best["value"]

    def wants(self, value: float, last_epoch: bool) -> bool:
        return self.improves(value) or last_epoch or time.monotonic() - self.last >= self.every_s

    def best_with(self, value: float, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """The best epoch once this one is checkpointed (this one's URI is known only once it is stored)."""
        if not self.improves(value):
            return self.best
        return {"value": value, "epoch": epoch, "val_error": metrics["val_error"], "val_nll": metrics["val_nll"],
                "checkpoint": None}

    def saved(self, best: dict[str, Any], uri: str | None) -> None:
        self.last = time.monotonic()
        self.best = best if best is self.best else {**best, "checkpoint": uri}


def train_loop(config: dict[str, Any], session: Session) -> dict[str, Any]:
    """One trial's training on one worker of `session`. Returns {"failure": reason} when the loss diverged,
    else {"best": the best epoch's metrics and checkpoint URI (None where the engine keeps its own record)}."""
    settings = TrialSettings.model_validate(config["settings"])
    torch.set_num_threads(max(1, int(config.get("cpus_per_worker", 1))))
    seed_everything(settings.seed)
    device = session.device()
    task = make_task(settings.data, settings.train, seed=settings.seed, rank=session.rank,
                     world_size=session.world_size, prepare_loader=session.prepare_loader)
    student = build_model(
        settings.model.arch, num_classes=task.num_classes, input_shape=task.input_shape, **settings.model.kwargs
    )
    teacher, teacher_metadata, teacher_source = _teacher(settings, task, device)
    resumed = session.restored()  # set when the engine restarts this trial after a failure
    resumed_state = None
    if resumed is not None:
        weights, resumed_state = load_latest(resumed)
        student.load_state_dict(weights)
    model = session.prepare_model(fast_path_student(student, settings.train, device, task.input_shape))
    optimizer = make_optimizer(model.parameters(), settings.train)
    scheduler = make_scheduler(optimizer, settings.train)
    done_epochs = restore_training_state(resumed_state, optimizer, scheduler) if resumed_state else 0
    policy = CheckpointPolicy(settings.train.checkpoint_every_s, (resumed_state or {}).get("best"),
                              checkpoint.uri(resumed) if resumed is not None else None)
    objective = get_objective(settings.distill.objective)
    loss_params = settings.distill.loss_params()

    def step(loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.train.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), settings.train.grad_clip)
        optimizer.step()

    # Every epoch's metrics so far: a checkpoint carries them, and a restarted trial reports them again, so
    # that an epoch whose report was lost with a killed driver still reaches MLflow.
    history: list[dict[str, Any]] = list((resumed_state or {}).get("history", []))
    first_report = _first_report_extras(settings, task, teacher, device, session.rank, done_epochs, history)
    metadata_base = _metadata_base(settings, task, teacher_metadata)
    for epoch in range(done_epochs + 1, settings.train.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        term_means = task.train_epoch(model, teacher_source, objective, loss_params, step, device, epoch)
        diverged = non_finite_terms(term_means)
        if diverged is not None:
            return {"failure": f"diverged: training loss not finite in epoch {epoch} ({diverged}) at lr {lr:g}"}
        val = task.score(_unwrap(model), "val", device)
        metrics = {
            "epoch": epoch, "lr": lr, "train_loss": sum(term_means.values()),
            **{f"loss/{name}": value for name, value in term_means.items()},
            "val_error": val.error, "val_nll": val.nll,
        }
        history.append(metrics)
        metrics = {**metrics, **first_report}
        first_report = {}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(metrics[settings.metric])
        else:
            scheduler.step()
        value = metrics[settings.metric]
        wanted = policy.wants(value, last_epoch=epoch == settings.train.epochs)
        with checkpoint_folder(session.rank == 0 and wanted) as directory:
            best = policy.best_with(value, epoch, metrics)
            if directory is not None:
                metadata = {**metadata_base, "epoch": epoch, "val_error": val.error, "val_nll": val.nll}
                checkpoint.save(directory, _unwrap(model), metadata)
                state = {**training_state(epoch, optimizer, scheduler), "best": best, "history": history}
                torch.save(state, Path(directory) / TRAINING_STATE_FILE)
            uri = session.report(metrics, directory)
            if directory is not None:
                policy.saved(best, uri)
    return {"best": policy.best}


def _first_report_extras(settings: TrialSettings, task, teacher, device, rank: int, done_epochs: int,
                         history: list[dict]) -> dict:
    """What the first epoch's report of a (re)started trial also carries: the epoch it resumed after and
    the metrics of the epochs before, and for teacher hygiene the frozen teacher's validation scores, which
    must match what it was selected with."""
    extras: dict[str, Any] = {"resumed_after_epoch": done_epochs, "replayed_epochs": history} if done_epochs else {}
    if teacher is not None and rank == 0:
        scores = task.score(teacher, "val", device)
        extras.update(teacher_val_error=scores.error, teacher_val_nll=scores.nll)
    return extras


def _teacher(settings: TrialSettings, task, device: torch.device):
    """(teacher module, its metadata, what train_epoch distils from: the module itself or its cached logits);
    all None for objectives without a teacher."""
    if settings.teacher_checkpoint is None:
        return None, None, None
    teacher, metadata = load_teacher(settings, task.num_classes, device)
    if settings.distill.teacher != "cached":
        return teacher, metadata, teacher
    # Built on this worker's device, epoch by epoch, shared with the generation's other trials.
    cached = teacher_cache.CachedTeacher(
        teacher, settings.data, task.splits, settings.teacher_cache or teacher_cache.DEFAULT_ROOT,
        settings.train.epochs, settings.distill.cache_dtype, device, settings.distill.cache_top_k,
    )
    return teacher, metadata, cached


def _metadata_base(settings: TrialSettings, task, teacher_metadata: dict | None) -> dict[str, Any]:
    """What every checkpoint of the trial says about itself (the epoch and its metrics are added per epoch)."""
    return {
        "arch": settings.model.arch,
        "kwargs": settings.model.kwargs,
        "num_classes": task.num_classes,
        "input_shape": list(task.input_shape),
        "sweep": settings.sweep,
        "spec_hash": settings.spec_hash,
        "chain": settings.chain,
        "generation": settings.generation,
        "arm": settings.arm,
        "trial": settings.trial,
        "seed": settings.seed,
        "objective": settings.distill.objective,
        "teacher": checkpoint.identity(teacher_metadata) if teacher_metadata else None,
        "node_id": ray.get_runtime_context().get_node_id(),  # provenance: which node trained it
    }
