"""The epoch loop: one trial's training, wherever its session runs it: a Ray Train worker (TorchTrainer,
Train V2), a warm host or the Tune trial's own process (banray.trial.sessions, banray.trial.hosts), or this process with no
engine at all (banray.training.session.LocalSession, `banray trial`).

It trains one trial's student for the spec's epochs, with a frozen teacher from generation ≥ 1
(eval mode, no grad, not in the optimizer), evaluates on the validation split every epoch, and reports
metrics every epoch; a checkpoint goes with them when the validation metric is at least as good as the
best so far, at the last epoch, and otherwise every `train.checkpoint_every_s` seconds. Rank 0 writes
checkpoints; the session stores them. Checkpoints and the teacher-logit cache are read through the session's
storage (banray.files), local or object storage.

Each checkpoint also holds the training state (epoch, optimizer, lr schedule, RNG states, the best epoch
so far): when Ray Train restarts a lost worker group, Tune a crashed trial, or a resumed sweep an
interrupted trial, the loop goes on from the last checkpoint as if nothing had happened. A non-finite
training loss ends the trial: the loop returns the reason, which the trial reports as its failure.
"""

from __future__ import annotations

import math
import random
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from banray.catalog.losses import get_objective
from banray.catalog.models import MODELS, build_model
from banray.files import Storage
from banray.records import TrialSummary
from banray.selection import MODE, epoch_improves
from banray.spec import Arm, ModelSpec, TrainSpec, TrialSettings
from banray.training import teacher_cache
from banray.training import checkpoint
from banray.training.checkpoint import CheckpointIdentity, CheckpointRecord
from banray.training.session import Session, checkpoint_folder
from banray.training.tasks import Task, make_task, use_channels_last
from banray.training.teacher import Ensemble, Frozen, OnlineTeacher, Teacher


def make_optimizer(parameters, train: TrainSpec, fused: bool = False) -> torch.optim.Optimizer:
    """The spec's optimizer; `fused` (for parameters on CUDA): one kernel per step for all parameters rather
    than a few per parameter, whose launches dominate a small model's step."""
    if train.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=train.lr, momentum=train.momentum, nesterov=train.nesterov,
                               weight_decay=train.weight_decay, fused=fused)
    optimizer_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[train.optimizer]
    return optimizer_class(parameters, lr=train.lr, weight_decay=train.weight_decay, fused=fused)


def make_scheduler(optimizer: torch.optim.Optimizer, train: TrainSpec):
    """A per-epoch learning-rate schedule; 'plateau' steps on the validation metric."""
    if train.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train.epochs)
    if train.lr_schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=train.lr_milestones, gamma=train.lr_gamma)
    if train.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=MODE, factor=train.lr_gamma, patience=0,
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


def load_latest(uri: str, storage: Storage) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model weights, training state) of the run's latest checkpoint. Fetching raises OSError, which the
    caller retries; a damaged or missing file is a BadCheckpoint at once."""
    weights = checkpoint.read_tensors(uri, checkpoint.WEIGHTS_FILE, storage)
    return weights, checkpoint.read_tensors(uri, checkpoint.TRAINING_STATE_FILE, storage)


def non_finite_terms(term_means: dict[str, float]) -> str | None:
    bad = {name: value for name, value in term_means.items() if not math.isfinite(value)}
    return ", ".join(f"{name} = {value}" for name, value in bad.items()) or None


def load_teacher(
    settings: TrialSettings, task: Task, device: torch.device, storage: Storage
) -> tuple[Frozen, list[CheckpointRecord]]:
    """The model the student learns from, frozen, and the records of the checkpoints it is made of: the previous
    generation's best model, or (distill.teacher_from 'ensemble') the Ensemble of generations 0 … k − 1's, each
    checked by its record. A broken checkpoint (checkpoint.BadCheckpoint) or another model than planned
    (TeacherMismatch) fails at once; only storage errors while fetching one are retried."""
    loaded = [_load_member(settings, task, generation, model, uri, storage)
              for generation, model, uri in settings.teachers()]
    models = [model for model, _ in loaded]
    # An ensemble of one (generation 1's) is its member: the same softmax, so the same teacher and cache.
    teacher = models[0] if len(models) == 1 else Ensemble(models)
    return Frozen(teacher.to(device)), [record for _, record in loaded]


def _load_member(settings: TrialSettings, task: Task, generation: int, model: ModelSpec | None, uri: str,
                 storage: Storage) -> tuple[nn.Module, CheckpointRecord]:
    """The model of `generation` of the trial's chain at `uri`, checked by its record."""
    if model is None:
        raise ValueError(f"trial settings of generation {settings.generation} name a teacher checkpoint "
                         "but not the teacher's model (teacher_model)")
    # The spec's model of that generation, as the current code computes it, trained on this trial's split.
    expected = _identity(settings, task, model, generation, "main")  # never teacher′
    return storage.retried(f"loading teacher {uri}", lambda: checkpoint.load(uri, expected=expected, storage=storage))


def _identity(settings: TrialSettings, task: Task, model: ModelSpec, generation: int, arm: Arm) -> CheckpointIdentity:
    """The identity of a checkpoint of `model` in `generation` of the trial's chain, on the trial's data."""
    return CheckpointIdentity(
        arch=model.arch, kwargs=model.kwargs, revision=MODELS.revision(model.arch), num_classes=task.num_classes,
        input_shape=list(task.input_shape), sweep=settings.sweep, spec_hash=settings.spec_hash,
        chain=settings.chain, generation=generation, arm=arm, dataset=settings.data.dataset,
        split_hash=task.split_hash,
    )


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


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
        self._best = best  # metric value, epoch, val_error, val_nll, checkpoint URI (None where not known)

    @property
    def best(self) -> dict[str, Any] | None:
        """The best epoch's record, its checkpoint's URI waited for where the session stores it later."""
        stored = self._best and self._best["checkpoint"]
        if isinstance(stored, Future):
            self._best = {**self._best, "checkpoint": stored.result()}
        return self._best

    def improves(self, value: float) -> bool:
        return epoch_improves(value, None if self._best is None else self._best["value"])

    def wants(self, value: float, last_epoch: bool) -> bool:
        return self.improves(value) or last_epoch or time.monotonic() - self.last >= self.every_s

    def best_with(self, value: float, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """The best epoch once this one is checkpointed (this one's URI is known only once it is stored)."""
        if not self.improves(value):
            return self.best
        return {"value": value, "epoch": epoch, "val_error": metrics["val_error"], "val_nll": metrics["val_nll"],
                "checkpoint": None}

    def saved(self, best: dict[str, Any], uri: str | Future | None) -> None:
        self.last = time.monotonic()
        self._best = best if best is self._best else {**best, "checkpoint": uri}


def train_loop(settings: TrialSettings, session: Session, cpus_per_worker: float = 1) -> TrialSummary:
    """One trial's training on one worker of `session`: its summary, a failure when the loss diverged (the
    best checkpoint's URI is None where the engine keeps its own record)."""
    torch.set_num_threads(max(1, int(cpus_per_worker)))  # a trial may reserve fractional CPUs
    seed_everything(settings.seed)
    training = _Training(settings, session)
    for epoch in range(training.done_epochs + 1, settings.train.epochs + 1):
        failure = training.epoch(epoch)
        if failure is not None:
            return TrialSummary(settings.trial, settings.seed, failure=failure)
    best = training.policy.best
    return TrialSummary(settings.trial, settings.seed, best_epoch=best["epoch"], value=best["value"],
                        val_error=best["val_error"], val_nll=best["val_nll"], checkpoint=best["checkpoint"])


class _Training:
    """A trial's training state on one worker: task, student, teacher, optimizer and schedule, put back
    from the last checkpoint when the engine restarts the trial."""

    def __init__(self, settings: TrialSettings, session: Session):
        self.settings, self.session = settings, session
        self.device = device = session.device()
        # cuDNN picks the fastest convolution algorithms for the trial's fixed shapes once, then reuses them.
        torch.backends.cudnn.benchmark = device.type == "cuda"
        self.task = task = make_task(settings.data, settings.train, seed=settings.seed, rank=session.rank,
                                     world_size=session.world_size)
        student = build_model(settings.model.arch, num_classes=task.num_classes, input_shape=task.input_shape,
                              **settings.model.kwargs)
        self.objective = get_objective(settings.distill.objective)
        self.loss_params = settings.distill.loss_params()
        self.teacher, teacher_records = _teacher(settings, self.objective, task, device, session.storage)
        resumed = session.restored()  # set when the engine restarts this trial after a failure
        state: dict[str, Any] = {}
        if resumed is not None:
            storage = session.storage
            weights, state = storage.retried(f"loading {resumed}", lambda: load_latest(resumed, storage))
            student.load_state_dict(weights)
        self.model = session.prepare_model(fast_path_student(student, settings.train, device, task.input_shape))
        self.optimizer = make_optimizer(self.model.parameters(), settings.train, fused=device.type == "cuda")
        self.scheduler = make_scheduler(self.optimizer, settings.train)
        self.done_epochs = restore_training_state(state, self.optimizer, self.scheduler) if state else 0
        self.policy = CheckpointPolicy(settings.train.checkpoint_every_s, state.get("best"), resumed)
        # Every epoch's metrics so far: a checkpoint carries them, and a restarted trial reports them again,
        # so that an epoch whose report was lost with a killed driver still reaches MLflow.
        self.history: list[dict[str, Any]] = list(state.get("history", []))
        self.first_report = _first_report_extras(self.teacher, task, device, session.rank, self.done_epochs,
                                                 self.history)
        self.record_base = _record_base(settings, task, teacher_records, session.node_id)

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.settings.train.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.train.grad_clip)
        self.optimizer.step()

    def epoch(self, epoch: int) -> str | None:
        """Train and validate one epoch and report it; the reason, if the loss diverged."""
        lr = self.optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        # Reading the means back waits for the device: the time covers the epoch's training work.
        term_means = self.task.train_epoch(self.model, self.teacher, self.objective, self.loss_params, self.step,
                                           self.device, epoch)
        samples_per_s = self.task.train_samples * self.session.world_size / (time.perf_counter() - started)
        diverged = non_finite_terms(term_means)
        if diverged is not None:
            return f"diverged: training loss not finite in epoch {epoch} ({diverged}) at lr {lr:g}"
        val = self.task.score(_unwrap(self.model), "val", self.device)
        metrics = {
            "epoch": epoch, "lr": lr, "train_loss": sum(term_means.values()),
            **{f"loss/{name}": value for name, value in term_means.items()},
            "val_error": val.error, "val_nll": val.nll, "samples_per_s": samples_per_s,
        }
        self.history.append(metrics)
        value = metrics[self.settings.metric]
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(value)
        else:
            self.scheduler.step()
        self.report(epoch, {**metrics, **self.first_report}, value)
        self.first_report = {}
        return None

    def report(self, epoch: int, metrics: dict[str, Any], value: float) -> None:
        """Report the epoch, with a checkpoint when the policy wants one (rank 0 writes it)."""
        wanted = self.policy.wants(value, last_epoch=epoch == self.settings.train.epochs)
        with checkpoint_folder(self.session.rank == 0 and wanted) as directory:
            if directory is None:
                self.session.report(metrics, None)
                return
            best = self.policy.best_with(value, epoch, metrics)
            self._save(directory, epoch, metrics, best)
            self.policy.saved(best, self.session.report(metrics, directory))

    def _save(self, directory: str, epoch: int, metrics: dict[str, Any], best: dict[str, Any]) -> None:
        record = CheckpointRecord(**self.record_base, epoch=epoch, val_error=metrics["val_error"],
                                  val_nll=metrics["val_nll"])
        checkpoint.save(directory, _unwrap(self.model), record)
        state = {**training_state(epoch, self.optimizer, self.scheduler), "best": best, "history": self.history}
        torch.save(state, Path(directory) / checkpoint.TRAINING_STATE_FILE)


def _first_report_extras(teacher: Teacher | None, task, device, rank: int, done_epochs: int,
                         history: list[dict]) -> dict:
    """What the first epoch's report of a (re)started trial also carries: the epoch it resumed after and
    the metrics of the epochs before, and for teacher hygiene the frozen teacher's validation scores, which
    must match what it was selected with (an ensemble teacher's are the ensemble's own)."""
    extras: dict[str, Any] = {"resumed_after_epoch": done_epochs, "replayed_epochs": history} if done_epochs else {}
    if teacher is not None and rank == 0:
        scores = task.score(teacher.model, "val", device)
        extras.update(teacher_val_error=scores.error, teacher_val_nll=scores.nll)
    return extras


def _teacher(
    settings: TrialSettings, objective, task: Task, device: torch.device, storage: Storage
) -> tuple[Teacher | None, list[CheckpointRecord]]:
    """(the teacher the student learns from, the records of the checkpoints it is made of); (None, []) for
    generation 0 and for objectives that need no teacher."""
    if settings.teacher_checkpoint is None or not objective.needs_teacher:
        return None, []
    model, records = load_teacher(settings, task, device, storage)
    if settings.distill.teacher != "cached":
        return OnlineTeacher(model), records
    # Built on this worker's device, epoch by epoch, shared with the generation's other trials.
    cached = teacher_cache.CachedTeacher(
        model, records, task.splits, settings.teacher_cache or teacher_cache.DEFAULT_ROOT, settings.train.epochs,
        settings.distill.cache_dtype, device, settings.distill.cache_top_k, storage,
    )
    return cached, records


def _record_base(settings: TrialSettings, task: Task, teachers: list[CheckpointRecord],
                 node_id: str) -> dict[str, Any]:
    """What every checkpoint of the trial records (the epoch and its metrics are added per epoch): of its
    teacher, generation − 1's checkpoint, and every member of an ensemble teacher."""
    identity = _identity(settings, task, settings.model, settings.generation, settings.arm)
    ensemble = settings.distill.teacher_from == "ensemble"
    return {
        **dict(identity), "trial": settings.trial, "seed": settings.seed, "objective": settings.distill.objective,
        "teacher": teachers[-1].as_teacher() if teachers else None,
        "teachers": [record.as_teacher() for record in teachers] if ensemble else [],
        "node_id": node_id,
    }
