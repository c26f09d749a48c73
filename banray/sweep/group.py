"""A generation group: one (chain, generation), or a chain's control arm, is a Ray Tune run of
`search.trials` trials. `run_group` searches the generation's settings (Optuna, ASHA) and selects its best
trial on validation (banray.selection); the driver (banray.sweep.start) runs each group in a thread of its own,
where torch, Ray Tune and MLflow are already imported, and decides when it starts (banray.sweep.dag).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import pyarrow.fs as pafs
import ray.tune as tune

from banray import ray_internals
from banray.columns import report_column
from banray.records import GenerationRecord, TrialSummary
from banray.results import tracking
from banray.selection import MODE, best_trial
from banray.spec import ResourcesSpec, SweepSpec, group_name
from banray.storage import ray_storage, with_retries
from banray.sweep.earlier_trials import earlier_settings, last_checkpoints
from banray.sweep.search import make_search, optuna_name, warm_start_point
from banray.sweep.trial_runs import TrialRuns, trial_run_ids
from banray.trial.hosts import drive_host
from banray.trial import wire
from banray.trial.trainable import run_trial, trial_class, trial_resources


@dataclass(frozen=True)
class SweepContext:
    """What every group of a sweep shares; built once by the driver."""

    spec: SweepSpec
    sweep_dir: str
    tracking: tracking.Tracking
    experiment_id: str
    slots_actor: str  # name of the WorkerSlots actor
    capacity: int  # worker slots: trials that can train at once
    tune_verbose: int  # Tune's live table only when the driver's output is a terminal

    def trials_at_once(self) -> int:
        """How many of a group's trials run at once: all the slots can take (the slots pool queues the rest)
        or, for trials that train in their own process, the group's share of the slots among the chains. A
        trial's process serves its group's next trial, so while the chains keep the slots busy, fewer
        trials at a time start fewer processes."""
        spec = self.spec
        if spec.resources.engine() == "train":
            return min(self.capacity, spec.search.trials)
        return max(1, min(spec.search.trials, self.capacity // spec.chains))

    @property
    def groups_at_once(self) -> int:
        """How many groups keep the worker slots busy: the chains' own, and control arms in the slots they leave."""
        return max(self.spec.chains, self.capacity // self.trials_at_once())

    @property
    def train_storage(self) -> str:
        return f"{self.sweep_dir}/train"

    @property
    def tune_storage(self) -> str:
        return f"{self.sweep_dir}/tune"


def run_groups_here(tune_state_every_s: float) -> None:
    """Set this process up for the groups' Tune runs: Tune reads these settings from the environment of the
    process it runs in. `tune_state_every_s`: how often Tune saves a run's experiment state, which a resumed
    sweep restores trials from."""
    # Tune's own per-result files (result.json, progress.csv, TensorBoard events) are written while the trial
    # waits for the controller after every report (9 ms of a 100 ms epoch); banray's metrics are in MLflow.
    os.environ.update({"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "TUNE_GLOBAL_CHECKPOINT_S": str(tune_state_every_s)})
    # Without those files, Tune's result grid warns once per group that it found no per-trial metrics.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


_registering = threading.Lock()


def trainable(resources: ResourcesSpec) -> type[tune.Trainable]:
    """The Tune trainable of a trial: the driver of a warm host (banray.trial.hosts, a function of its own so
    that its process imports no torch), or `run_trial`."""
    return trial_class(drive_host if resources.on_host() else run_trial)


def registered_trainable(resources: ResourcesSpec) -> str:
    """The name of the trial trainable with its resources in Tune's registry. The registry is one per
    process and not thread-safe, and the driver's Tune runs start side by side in its threads: they
    register here, one at a time, and hand Tune the name."""
    wanted, trial_trainable = trial_resources(resources), trainable(resources)
    # Tune's registry is cluster-wide: the name says everything the registered object holds.
    name = "-".join(["banray", trial_trainable.__name__.replace("_", "-"), *(f"{k}{v:g}" for k, v in sorted(wanted.items()))])
    with _registering:
        tune.register_trainable(name, tune.with_resources(trial_trainable, wanted))
    return name


def group_label(chain: int, generation: int, arm: str = "main") -> str:
    return f"chain {chain} control (teacher′)" if arm == "control" else f"chain {chain} generation {generation}"


def say(label: str, text: str) -> None:
    # One write per line: print() writes a line and its newline apart, and two groups' threads interleave them.
    sys.stdout.write(f"[banray] {label}: {text}\n")
    sys.stdout.flush()


class TrialProgress(tune.Callback):
    """One plain log line per finished trial, marking a new best (works without a terminal)."""

    def __init__(self, label: str, metric: str):
        self.label, self.metric = label, metric
        self.best = math.inf

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        summary = TrialSummary.from_report(result)
        if summary is not None and not summary.finished:
            say(self.label, f"trial {wire.trial_number(trial.config)} failed: {summary.failure}")
            return
        value = result.get(self.metric)
        if value is None:
            return
        if summary is None:
            text = f"stopped early after epoch {result.get('epoch')}: {self.metric} {value:.4f}"
        else:
            text = f"finished: {self.metric} {value:.4f}"
            if value < self.best:
                self.best = value
                text += " (new best)"
        say(self.label, f"trial {wire.trial_number(trial.config)} {text}")

    def on_trial_error(self, iteration, trials, trial, **info):
        try:
            error = trial.get_pickled_error()
        except OSError:  # the error file is in storage, which may be away for a moment
            error = None
        reason = _failure_reason(error) if error is not None else "see its MLflow run and the Ray logs"
        say(self.label, f"trial {wire.trial_number(trial.config)} failed: {reason}")


def _objective_label(objective: Any) -> str:
    return objective if isinstance(objective, str) else "search over " + "|".join(map(str, objective["choice"]))


def _role(generation: int, arm: str) -> str:
    return "control" if arm == "control" else "teacher" if generation == 0 else "student"


def start_generation_run(
    ctx: SweepContext, chain: int, generation: int, teacher: GenerationRecord | None, arm: str = "main"
) -> str:
    """The group's MLflow run, created by the driver so the sweep state can name it before the group
    starts (a resumed sweep continues that run). It is nested under its chain's run: its teacher's, or a new
    one for a chain's first group (its teacher, its control arm) and for a teacher run from before chain runs."""
    settings = ctx.spec.generation_settings(chain, generation, teacher.checkpoint if teacher else None, arm)
    teacher_run_id = teacher.mlflow_run_id if teacher else None
    chain_run = teacher_run_id and tracking.chain_run_of(ctx.tracking, teacher_run_id)
    if not chain_run:
        chain_run = tracking.start_chain_run(ctx.tracking, ctx.experiment_id, ctx.spec.name, chain, arm,
                                             ctx.spec.generations)
    tags = tracking.group_tags("generation", ctx.spec.name, chain, generation, arm, _role(generation, arm),
                               teacher_run_id=teacher_run_id)
    return tracking.start_run(
        ctx.tracking,
        ctx.experiment_id,
        run_name=tracking.run_name(chain, generation, arm),
        tags={**tags, tracking.NOTE: generation_note(ctx, chain, generation, arm, teacher_run_id)},
        params=settings,
        parent_run_id=chain_run,
    )


def generation_note(ctx: SweepContext, chain: int, generation: int, arm: str, teacher_run_id: str | None,
                    record: GenerationRecord | None = None) -> str:
    """A generation run's description: what it is, its teacher (a link to its run), and once `record` is
    evaluated, its scores."""
    if arm == "control":
        what = f"the control arm of chain {chain}: the teacher's recipe with a fresh seed, trained from scratch"
    elif teacher_run_id is None:
        what = f"the teacher of chain {chain}, trained from scratch"
    else:
        teacher = f"[{tracking.run_name(chain, generation - 1)}]({tracking.run_link(ctx.experiment_id, teacher_run_id)})"
        what = f"generation {generation} of chain {chain}, distilled from its teacher {teacher}"
    text = (f"**{report_column(generation, arm)}**: {what} (sweep `{ctx.spec.name}`). The best of "
            f"{ctx.spec.search.trials} trial(s) on validation `{ctx.spec.search.metric}`; the trials' runs are "
            "nested below.")
    if record is not None and record.test_error is not None:
        ece = f", ECE {100 * record.test_ece:.2f}%" if record.test_ece is not None else ""
        text += (f"\n\nBest trial {record.best_trial} (epoch {record.best_epoch}): validation error "
                 f"{100 * record.val_error:.2f}%; test error {100 * record.test_error:.2f}%, test NLL "
                 f"{record.test_nll:.3f}{ece} (its model, evaluated once on the test split).")
    return text


def _failure_reason(error: BaseException) -> str:
    """One line saying why a trial failed: the error's first line."""
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def run_group(
    ctx: SweepContext,
    chain: int,
    generation: int,
    teacher: GenerationRecord | None,
    run_id: str,
    restore: bool,
    arm: str = "main",
) -> GenerationRecord:
    """Run (or, with `restore`, continue an interrupted run of) one generation's Tune run; with arm
    "control", the chain's teacher′ (generation 0's recipe, fresh seeds)."""
    spec = ctx.spec
    settings = spec.generation_settings(chain, generation, teacher.checkpoint if teacher else None, arm)
    record = GenerationRecord(
        chain=chain,
        generation=generation,
        role=_role(generation, arm),
        arch=settings["model"]["arch"],
        objective=_objective_label(settings["distill"]["objective"]),
        status="failed",
        mlflow_run_id=run_id,
        teacher_checkpoint=teacher.checkpoint if teacher else None,
        teacher_run_id=teacher.mlflow_run_id if teacher else None,
    )
    label = group_label(chain, generation, arm)
    tuner = _tuner(ctx, chain, generation, teacher, run_id, restore, arm, settings)
    grid = tuner.fit()
    _prune_checkpoints(grid)
    trials = [_trial_outcome(spec, generation, result) for result in grid]
    return _select(ctx, record, trials, trial_run_ids(ctx.tracking, ctx.experiment_id, run_id), label)


def _tuner(ctx: SweepContext, chain: int, generation: int, teacher: GenerationRecord | None, run_id: str,
           restore: bool, arm: str, settings: dict[str, Any]) -> tune.Tuner:
    """The group's Tune run: restored from storage when an interrupted one is there, else a new one."""
    name, label = group_name(chain, generation, arm), group_label(chain, generation, arm)
    ray_internals.keep_credentials_out_of_tune()
    ray_internals.save_tune_state_only_between_uploads()
    tune_root, tune_fs = ray_storage(ctx.tune_storage)
    trainable = registered_trainable(ctx.spec.resources)
    if restore and _saved_state(f"{tune_root}/{name}", tune_fs):
        # Finished trials stay finished; unfinished ones continue, their Train runs from the last checkpoint.
        say(label, f"continuing its interrupted Tune run from {ctx.tune_storage}/{name}")
        return tune.Tuner.restore(
            f"{tune_root}/{name}", trainable, resume_unfinished=True, resume_errored=False, storage_filesystem=tune_fs
        )
    earlier_checkpoints, first_points = {}, []
    if restore:
        earlier_checkpoints, searched = _earlier_trials(ctx, name, run_id, generation, settings)
        first_points = [{optuna_name(key): value for key, value in values.items()} for values in searched]
        say(label, f"its interrupted Tune run in {ctx.tune_storage}/{name} left no whole state to continue; its "
                   f"trials start again with their settings, {_continuing(earlier_checkpoints)}")
    spec = ctx.spec
    start = warm_start_point(spec, generation, teacher.best_settings if teacher else None)
    search_alg, trial_space, scheduler = make_search(spec, chain, generation, first_points or ([start] if start else []))
    ticket = wire.Ticket(chain=chain, generation=generation, arm=arm, metric=spec.search.metric,
                         train_storage=ctx.train_storage, slots_actor=ctx.slots_actor,
                         resources=spec.resources.model_dump(mode="json"), earlier_checkpoints=earlier_checkpoints)
    in_trial = spec.resources.engine() == "trial"
    return tune.Tuner(
        trainable,
        param_space=wire.group_config(_trials_settings(ctx, generation, teacher, settings), ticket, trial_space),
        tune_config=tune.TuneConfig(
            metric=spec.search.metric,
            mode=MODE,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=spec.search.trials if search_alg else 1,
            max_concurrent_trials=ctx.trials_at_once(),
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            # A trial that trains in its own process hands that process to the group's next trial:
            # torch and the data are loaded once per group, not once per trial.
            reuse_actors=in_trial,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=tune_root,
            storage_filesystem=tune_fs,
            verbose=ctx.tune_verbose,
            callbacks=[TrialProgress(label, spec.search.metric), TrialRuns(ctx.tracking, ctx.experiment_id, run_id)],
            # Ray Train restarts its own workers; a trial that trains in its process is restarted by Tune.
            failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures if in_trial else 0),
            # Tune keeps every checkpoint while the group runs: with num_to_keep it deletes the one its
            # last saved experiment state may still name, which a restore after a killed driver needs.
            # The group prunes them once it is over (_prune_checkpoints); the state is saved every
            # train.checkpoint_every_s (TUNE_GLOBAL_CHECKPOINT_S, set by run_groups_here).
        ),
    )


def _trials_settings(ctx: SweepContext, generation: int, teacher: GenerationRecord | None,
                     settings: dict[str, Any]) -> dict[str, Any]:
    """The generation's settings as its trials share them: the search fills in its ranges per trial, and a
    cached teacher's logits are kept in the sweep's storage (one cache per generation, built by its trials)."""
    if teacher is not None and ctx.spec.distill.teacher == "cached":
        settings["teacher_cache"] = f"{ctx.sweep_dir}/teacher-cache"
    for key in ctx.spec.search_space(generation):
        section, field_name = key.split(".")
        del settings[section][field_name]
    return settings


def _earlier_trials(ctx: SweepContext, name: str, run_id: str, generation: int, settings: dict[str, Any]
                    ) -> tuple[dict[int, wire.EarlierCheckpoint], list[dict[str, Any]]]:
    """What a group's lost Tune run left: its trials' own last checkpoints, by trial number with the searched
    values each was trained with, and those values in trial order."""
    if ctx.spec.resources.engine() == "train":
        checkpoints = last_checkpoints(ctx.train_storage, f"{name}-*", settings)
    else:
        checkpoints = last_checkpoints(f"{ctx.tune_storage}/{name}", "trial_*", settings)
    searched = earlier_settings(ctx.tracking, ctx.experiment_id, run_id, ctx.spec, generation)
    if not ctx.spec.search_space(generation):  # nothing searched: every trial's settings are known
        searched = [{}] * max([len(searched), *(trial + 1 for trial in checkpoints)])
    return {trial: wire.EarlierCheckpoint(checkpoint=found.uri, settings=searched[trial], epoch=found.epoch)
            for trial, found in sorted(checkpoints.items()) if trial < len(searched)}, searched


def _continuing(earlier_checkpoints: dict[int, wire.EarlierCheckpoint]) -> str:
    if not earlier_checkpoints:
        return "from scratch: none had a whole checkpoint"
    after = ", ".join(f"trial {trial} after epoch {found.epoch}" for trial, found in earlier_checkpoints.items())
    return f"each from its own last checkpoint where it has one ({after})"


def _saved_state(run_path: str, fs: pafs.FileSystem) -> bool:
    """Whether an interrupted Tune run can be continued: Tune saved its experiment state at least once, and the
    newest one (the one Tune restores) is whole. A driver killed before the first save leaves only tuner.pkl,
    from which Tune would start trials without settings; so would a state cut short."""
    if not tune.Tuner.can_restore(run_path, storage_filesystem=fs):
        return False
    files = fs.get_file_info(pafs.FileSelector(run_path))  # the storage filesystem retries its calls
    pattern = ray_internals.experiment_state_files()
    states = sorted(f.path for f in files if fnmatch.fnmatch(PurePosixPath(f.path).name, pattern))
    if not states:
        return False
    with fs.open_input_stream(states[-1]) as stream:
        try:
            json.loads(stream.read())
        except ValueError:
            return False
    return True


@dataclass(frozen=True)
class _TrialOutcome:
    """One trial of a finished Tune run: its summary (None if ASHA stopped it early), its error, its config."""

    result: tune.Result
    summary: TrialSummary | None
    settings: dict[str, Any]  # the searched values

    @property
    def status(self) -> str:
        if self.result.error is not None or (self.summary is not None and not self.summary.finished):
            return "failed"
        return "finished" if self.summary is not None else "stopped"


def _trial_outcome(spec: SweepSpec, generation: int, result: tune.Result) -> _TrialOutcome:
    return _TrialOutcome(result, TrialSummary.from_report(result.metrics),
                         wire.searched(result.config, spec.search_space(generation)))


def _trial_entry(outcome: _TrialOutcome, run_ids: dict[str, str]) -> dict[str, Any]:
    """A trial as the group's record lists it."""
    result, summary, status = outcome.result, outcome.summary, outcome.status
    metrics = result.metrics or {}
    trial = wire.trial_number(result.config)
    if status == "finished":
        return {"trial": trial, "status": "finished", "seed": summary.seed, "val_error": summary.val_error,
                "val_nll": summary.val_nll, "best_epoch": summary.best_epoch, "checkpoint": summary.checkpoint,
                "mlflow_run_id": run_ids.get(metrics["trial_id"]), "settings": outcome.settings}
    if status == "stopped":
        return {"trial": trial, "status": f"stopped early after epoch {metrics.get('epoch')}",
                "val_error": metrics.get("val_error"), "val_nll": metrics.get("val_nll"), "settings": outcome.settings}
    reason = summary.failure if result.error is None else _failure_reason(result.error)
    return {"trial": trial, "status": "failed", "reason": reason, "settings": outcome.settings}


def _select(ctx: SweepContext, record: GenerationRecord, trials: list[_TrialOutcome], run_ids: dict[str, str],
            label: str) -> GenerationRecord:
    """The group's record with its trials and its best trial on validation (failed if none finished)."""
    record.trials = sorted((_trial_entry(t, run_ids) for t in trials), key=lambda t: (t["trial"] is None, t["trial"]))
    finished = [t for t in trials if t.status == "finished"]
    if not finished:
        reasons = sorted({t["reason"] for t in record.trials if t["status"] == "failed"})
        record.message = f"no trial of {ctx.spec.search.trials} finished" + (
            f" ({'; '.join(reasons)})" if reasons else "; see the Ray logs and the MLflow trial runs"
        )
        tracking.end_run(ctx.tracking, record.mlflow_run_id, "FAILED")
        say(label, record.message)
        return record
    best = best_trial(finished, value=lambda t: t.summary.value, number=lambda t: t.summary.trial)
    summary = best.summary
    record.status = "finished"
    record.best_trial, record.best_trial_run_id = summary.trial, run_ids.get(best.result.metrics["trial_id"])
    record.best_epoch, record.seed, record.checkpoint = summary.best_epoch, summary.seed, summary.checkpoint
    record.val_error, record.val_nll = summary.val_error, summary.val_nll
    record.best_settings = best.settings
    settings_text = f" with {record.best_settings}" if record.best_settings else ""
    say(label, f"best trial {record.best_trial} (epoch {record.best_epoch}){settings_text}: val_error "
               f"{100 * record.val_error:.2f}%")
    return record


def _prune_checkpoints(grid: tune.ResultGrid) -> None:
    """Delete every checkpoint of a finished Tune run but each finished trial's best (its summary names it):
    the trials are over, so no restart or restore can want the others."""
    for result in grid:
        summary = TrialSummary.from_report(result.metrics)
        keep = summary.checkpoint if summary is not None else None  # None for a failed or stopped trial
        for stored, _ in result.best_checkpoints or []:
            if keep is None or PurePosixPath(stored.path).name != PurePosixPath(keep).name:
                with_retries(f"deleting {stored.path}", lambda: stored.filesystem.delete_dir(stored.path))


def stop_reason(spec: SweepSpec, records: list[GenerationRecord]) -> str | None:
    """Why a chain should not go on after its last record, or None."""
    last = records[-1]
    if last.status != "finished":
        return f"no trial of generation {last.generation} finished"
    rule = spec.chain_stop
    if rule is None or len(records) < 2:
        return None
    metric = spec.search.metric
    previous, current = getattr(records[-2], metric), getattr(last, metric)
    if previous - current < rule.min_improvement:
        return (
            f"generation {last.generation}'s best {metric} {current:.4f} does not beat generation "
            f"{last.generation - 1}'s {previous:.4f} by chain_stop.min_improvement = {rule.min_improvement}"
        )
    return None


def tune_verbosity() -> int:
    return 1 if sys.stdout.isatty() else 0
