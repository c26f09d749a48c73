"""A trial: one Tune function trainable that runs the worker loop on one of three engines: a warm host of
the sweep (`resources.trainer` 'trial', banray.trial.hosts), the Tune trial's own process (a GPU trial, or
`warm_processes: false`), or a TorchTrainer it builds and fits (the Train V2 pattern).

A trial that drives a TorchTrainer holds almost no resources itself (a little memory, no CPU); one that
trains in its own process or on a host of its node holds its worker's CPUs. Each takes a worker slot from
the sweep's `WorkerSlots` pool (banray.trial.slots) before training, so waiting trials never hold the CPUs a
trainer needs. The last row a trial reports is its summary: best validation metrics, the best
checkpoint's URI and its MLflow run id.

A trial is restartable: its Train run's name is found again from its Tune trial id, so a trial restored
by a resumed sweep continues it instead of starting a new one. After a crash, Ray Train replaces lost
workers, or Tune restarts a trial of the other engines, from the last checkpoint (`resources.max_failures`
times). A diverged trial ends with a `failure` summary, not an error: a restart would only diverge again.
A trial never talks to MLflow: its group's process logs its reports (banray.sweep.trial_runs), so a trial
process imports and opens no tracking store.
"""

from __future__ import annotations

import dataclasses
import functools
import signal
from dataclasses import dataclass
from typing import Any, Callable

import ray
import ray.train
import ray.tune as tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from banray import ray_internals
from banray.records import TrialSummary
from banray.selection import MODE, best_checkpoint
from banray.spec import ResourcesSpec, TrialSettings, trial_seed
from banray.storage import checkpoint_uri, ray_storage
from banray.training.loop import train_loop
from banray.trial import wire
from banray.trial.sessions import TuneSession, train_loop_per_worker
from banray.trial.slots import holding_a_slot, slot_priority
from banray.trial.tune_report import continued_from, earlier_checkpoint


@dataclass(frozen=True)
class TrialConfig:
    """A trial as its Tune config carries it (banray.trial.wire): its typed settings and its group's ticket."""

    settings: TrialSettings
    ticket: wire.Ticket

    @property
    def resources(self) -> ResourcesSpec:
        return ResourcesSpec.model_validate(self.ticket.resources)


def read_trial(config: dict[str, Any]) -> TrialConfig:
    """A trial's settings (its seed drawn from the seed tree) and ticket, from its Tune config: where the search's
    values enter the trial's typed settings, once in each process that needs them (the trial's, its group's)."""
    fields, ticket = wire.settings_fields(config), wire.ticket(config)
    seed = trial_seed(fields.pop("seed_root"), ticket.chain, ticket.generation, fields["trial"], ticket.arm)
    return TrialConfig(TrialSettings.model_validate({**fields, "seed": seed}), ticket)


def trial_resources(resources: ResourcesSpec) -> dict[str, float]:
    """What a trial's Tune actor reserves. A trial that trains in its own process holds its worker's CPUs
    and GPUs; one that drives a TorchTrainer holds almost nothing (a Tune trial needs a non-empty bundle,
    and reserving CPU would starve its trainer's workers on small machines)."""
    if resources.engine() == "train":
        return {"cpu": 0, "memory": 256 * 2**20}
    return {"cpu": resources.cpus_per_worker, "gpu": resources.gpus_per_worker}


@functools.cache
def trial_class(function: Callable[[dict[str, Any]], None]) -> type[tune.Trainable]:
    """Tune's class for a function trainable, whose process ends at once on SIGTERM. Ray sends one to a
    Tune trial's process as it exits at the end of its Tune run, and Ray's handler raises SystemExit: one
    that lands in a callback of the exiting interpreter is printed to the sweep's output as a traceback."""

    class Trial(ray_internals.function_trainable(function)):
        def setup(self, config: dict[str, Any]) -> None:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # Tune sets a trial up in its process's main thread
            super().setup(config)

    Trial.__name__ = Trial.__qualname__ = function.__name__
    return Trial


def run_trial(config: dict[str, Any]) -> None:
    """The Tune trainable of a trial on a TorchTrainer or in the Tune trial's own process. Its last report
    is a summary: the best epoch and its checkpoint, or the reason the trial cannot produce a model
    (`failure`: a diverged loss, which a restart would only repeat)."""
    trial = read_trial(config)
    settings, resources = trial.settings, trial.resources
    with holding_a_slot(trial.ticket.slots_actor, slot_priority(settings.arm, settings.generation)):
        if resources.engine() == "train":
            summary = _fit_trainer(trial, earlier_checkpoint(config))
        else:
            session = TuneSession(use_gpu=resources.gpus_per_worker > 0, restored=continued_from(config))
            try:
                summary = train_loop(settings, session, resources.cpus_per_worker)
            finally:  # ended, failed or stopped by ASHA
                session.release_device_memory()
    tune.report(summary.to_report(settings.metric))


def _fit_trainer(trial: TrialConfig, earlier: ray.train.Checkpoint | None) -> TrialSummary:
    """The worker loop on a TorchTrainer's worker group, which Ray Train restarts from the last checkpoint, and
    starts from `earlier` (the trial's own checkpoint from a lost Tune run) if given."""
    settings, resources = trial.settings, trial.resources
    context = tune.get_context()
    storage_path, storage_filesystem = ray_storage(trial.ticket.train_storage)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=wire.worker_config(settings, resources.cpus_per_worker, earlier),
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.workers_per_trial,
            use_gpu=resources.gpus_per_worker > 0,
            resources_per_worker={"CPU": resources.cpus_per_worker, "GPU": resources.gpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            # Unique per trial: a reused name would silently resume an older run.
            name=f"{context.get_experiment_name()}-{context.get_trial_id()}",
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=settings.metric, checkpoint_score_order=MODE
            ),
            failure_config=ray.train.FailureConfig(max_failures=resources.max_failures),
            callbacks=[TuneReportCallback()],
            # Train logs every report and checkpoint at INFO; banray prints its own progress instead.
            logging_config=ray.LoggingConfig(log_level="WARNING"),
        ),
    )
    result = trainer.fit()
    summary: TrialSummary = result.return_value
    if not summary.finished:
        return summary
    # Ray Train keeps the best checkpoint (and the latest): the worker never knew the best one's URI.
    stored, _ = best_checkpoint(result.best_checkpoints, settings.metric)
    return dataclasses.replace(summary, checkpoint=checkpoint_uri(stored))
