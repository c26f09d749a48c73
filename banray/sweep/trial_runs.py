"""A group's trials in MLflow: one run per trial, under the generation's run, written from the group's
process by a Tune callback, never by the trial.

Every report a trial makes reaches Tune's controller in the group's process anyway. Logging them there
keeps MLflow (its import, its store, its connections) out of every trial process, which on a small node
costs seconds of CPU per trial, and gives one place that knows each trial's run: created when the trial
first starts, found again by its trial number when a resumed sweep restores the trial (or starts it again
from its own checkpoint). An epoch's metrics are logged once, even when a restarted trial reports that
epoch again. Epochs reach MLflow in batches, each with the time it was reported: a trial's first at once,
then at most every `FLUSH_S` seconds (one write per epoch of longer epochs), and whatever is left when the
trial ends.
"""

from __future__ import annotations

import logging
import numbers
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import ray.tune as tune

from banray import ray_internals
from banray.records import SUMMARY, TrialSummary
from banray.results import tracking
from banray.spec import group_name
from banray.trial.trainable import read_trial

logger = logging.getLogger(__name__)

# Reported by the first epoch after a (re)start: the teacher's scores, logged at step 0 once per run, and
# the epoch a restarted trial went on after, logged at that step whether or not its epoch is logged again.
TEACHER_METRICS = ("teacher_val_error", "teacher_val_nll")
RESUMED = "resumed_after_epoch"
# A restarted trial's first report also carries the epochs before its checkpoint: those whose reports were
# lost with a killed driver (Ray Train keeps its checkpoints apart from Tune's controller) are logged then.
REPLAYED = "replayed_epochs"
# How late a trial's epochs may reach MLflow: a write per epoch of the quickstart's 0.1 s epochs costs the
# group's process (and a tracking server) about a tenth of a core.
FLUSH_S = 2.0
# Tune's own keys in every result, beside what the worker reported.
TUNE_KEYS = ray_internals.tune_result_keys() | {"done", "trial_id", "experiment_tag", "should_checkpoint", SUMMARY}


def epoch_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The worker's metrics of one epoch's result, without Tune's bookkeeping and the teacher's scores."""
    return {
        key: value for key, value in result.items()
        if key not in TUNE_KEYS and key not in (*TEACHER_METRICS, RESUMED) and isinstance(value, numbers.Real)
    }


class TrialRuns(tune.Callback):
    """The MLflow runs of one group's trials (children of the generation's run `generation_run_id`)."""

    def __init__(self, track: tracking.Tracking, experiment_id: str, generation_run_id: str):
        self.track, self.experiment_id, self.generation_run_id = track, experiment_id, generation_run_id
        self.client = track.client()
        self.runs: dict[str, str] = {}  # Tune trial id → MLflow run id
        self.logged_through: dict[str, int] = {}  # Tune trial id → the last epoch its run holds (or will)
        self.pending: dict[str, list[tuple]] = {}  # Tune trial id → its epochs' metric rows not yet written
        self.flushed_at: dict[str, float] = {}  # Tune trial id → when its rows were last written
        self._writer: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict[str, Any]:
        # The Tuner pickles its callbacks into tuner.pkl: the writer thread stays behind.
        return {**self.__dict__, "_writer": None}

    def _write(self, call: Callable[..., Any], *args: Any) -> Future:
        """Run an MLflow write on the group's writer thread, in order. A trial waits for Tune's controller
        after every report (Tune's function trainables report synchronously), so a write made here would
        hold up its next epoch; a lost write is replayed from the trial's checkpointed history."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="banray-trial-runs")
        return self._writer.submit(_logged, call, *args)

    def _flush(self, trial_id: str) -> None:
        rows = self.pending.pop(trial_id, None)
        self.flushed_at[trial_id] = time.monotonic()
        if rows:
            self._write(tracking.log_rows, self.client, self.runs[trial_id], rows)

    def on_experiment_end(self, trials, **info):
        """Every write is made before the group reads its trials' runs."""
        for trial_id in list(self.pending):
            self._flush(trial_id)
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def on_trial_start(self, iteration, trials, trial, **info):
        settings = read_trial(trial.config).settings
        run_id = tracking.start_or_resume_trial_run(
            self.track,
            self.experiment_id,
            run_name=f"{group_name(settings.chain, settings.generation, settings.arm)}-trial{settings.trial}",
            tags=tracking.group_tags(
                "trial", settings.sweep, settings.chain, settings.generation, settings.arm, settings.role,
                trial=settings.trial, tune_trial_id=trial.trial_id,
            ),
            params=settings.model_dump(mode="json"),
            parent_run_id=self.generation_run_id,
        )
        if trial.trial_id in self.runs:  # restarted by Tune: what it reported before must be in the run first
            self._flush(trial.trial_id)
            self._written()
        self.runs[trial.trial_id] = run_id
        # Epochs the run holds from before a restart (from a checkpoint or from scratch) are not logged again.
        history = self.client.get_metric_history(run_id, "val_error")
        self.logged_through[trial.trial_id] = max((m.step for m in history), default=0)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or "epoch" not in result:
            return
        teacher = {key: result[key] for key in TEACHER_METRICS if key in result}
        if teacher:
            self._write(_log_teacher_once, self.client, run_id, teacher)
        if RESUMED in result:
            self._write(tracking.log_metrics, self.client, run_id, {RESUMED: result[RESUMED]}, int(result[RESUMED]))
        for row in [*result.get(REPLAYED, []), result]:
            if row["epoch"] > self.logged_through[trial.trial_id]:
                rows = tracking.metric_rows(epoch_metrics(row), int(row["epoch"]))
                self.pending.setdefault(trial.trial_id, []).extend(rows)
                self.logged_through[trial.trial_id] = int(row["epoch"])
        if time.monotonic() - self.flushed_at.get(trial.trial_id, -FLUSH_S) >= FLUSH_S:
            self._flush(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        self._flush(trial.trial_id)
        summary = TrialSummary.from_report(trial.last_result)
        if summary is not None and not summary.finished:
            self._write(self.client.set_tag, run_id, f"{tracking.TAG_PREFIX}failure", summary.failure)
            self._write(self.client.set_terminated, run_id, "FAILED")
        elif summary is not None:
            self._write(self.client.set_terminated, run_id, "FINISHED")
        else:  # no summary: ASHA stopped it early
            self._write(self.client.set_tag, run_id, f"{tracking.TAG_PREFIX}stopped_early", "ASHA")
            self._write(self.client.set_terminated, run_id, "KILLED")
        self._written()

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is not None:
            self._flush(trial.trial_id)
            self._write(self.client.set_terminated, run_id, "FAILED")
            self._written()

    def _written(self) -> None:
        """Wait for the writes so far: an ended trial is not run again, even by a resumed sweep, so nothing
        would replay what a driver killed now had not yet written. Nothing waits on this but Tune's controller."""
        self._write(lambda: None).result()


def _log_teacher_once(client, run_id: str, teacher: dict[str, float]) -> None:
    """The teacher's scores at step 0, unless a run restarted after them holds them already."""
    if not client.get_metric_history(run_id, TEACHER_METRICS[0]):
        tracking.log_metrics(client, run_id, teacher, step=0)


def _logged(call: Callable[..., Any], *args: Any) -> None:
    try:
        call(*args)
    except Exception:  # the tracking server may be away for a moment; training goes on without this write
        logger.warning("banray: an MLflow write for a trial run failed", exc_info=True)


def trial_run_ids(track: tracking.Tracking, experiment_id: str, generation_run_id: str) -> dict[str, str]:
    """Tune trial id → MLflow run id of every trial run of a generation, including runs made before a
    resumed sweep restored the group."""
    found = track.client().search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{generation_run_id}'", max_results=10_000
    )
    return {run.data.tags.get(f"{tracking.TAG_PREFIX}tune_trial_id"): run.info.run_id for run in found}
