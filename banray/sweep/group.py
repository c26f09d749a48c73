"""A generation group: one (chain, generation), or one of a chain's side arms, is a Ray Tune run of
`search.trials` trials. `run_group` searches the generation's settings (Optuna, ASHA) and selects its best
trial on validation (banray.selection); the driver (banray.sweep.driver) runs each group in a thread of its own,
where torch, Ray Tune and MLflow are already imported, and decides when it starts (banray.sweep.dag).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import pyarrow.fs as pafs
import ray.tune as tune

from banray import ray_internals
from banray.records import MAIN_ARM, GenerationRecord, TrialSummary
from banray.results import tracking
from banray.selection import MODE, best_trial
from banray.spec import SweepSpec, group_name, role
from banray.storage import ray_storage, with_retries
from banray.sweep.context import SweepContext
from banray.sweep.earlier_trials import earlier_settings, last_checkpoints
from banray.sweep.generation_runs import ensemble_teacher, group_settings, objective_label
from banray.sweep.progress import TrialProgress, failure_reason, group_label, say
from banray.sweep.search import make_search, optuna_name, warm_start_point
from banray.sweep.trial_runs import TrialRuns, trial_run_ids
from banray.trial import wire
from banray.trial.engines import registered_trainable


def run_group(
    ctx: SweepContext,
    chain: int,
    generation: int,
    teacher: GenerationRecord | None,
    run_id: str,
    restore: bool,
    arm: str = MAIN_ARM,
) -> GenerationRecord:
    """Run (or, with `restore`, continue an interrupted run of) one generation's Tune run; with a side `arm`,
    that arm's model of the chain (generation 0 with the arm's recipe, fresh seeds)."""
    spec = ctx.spec
    settings = group_settings(spec, chain, generation, teacher, arm)
    members, member_run_ids = ensemble_teacher(spec, teacher)
    record = GenerationRecord(
        chain=chain,
        generation=generation,
        role=role(generation, arm),
        arch=settings["model"]["arch"],
        objective=objective_label(settings["distill"]["objective"]),
        status="failed",
        mlflow_run_id=run_id,
        teacher_checkpoint=teacher.checkpoint if teacher else None,
        teacher_run_id=teacher.mlflow_run_id if teacher else None,
        arm=arm,
        teacher_checkpoints=members,
        teacher_run_ids=member_run_ids,
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
    search_alg, trial_space, scheduler = make_search(spec, chain, generation, first_points or ([start] if start else []),
                                                     settings["train"]["epochs"])
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
    reason = summary.failure if result.error is None else failure_reason(result.error)
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


