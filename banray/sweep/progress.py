"""A sweep's progress as plain lines, one per event, readable in a log (Ray Tune's live table only on a
terminal): which group, what happened to which trial."""

from __future__ import annotations

import math
import sys

import ray.tune as tune

from banray.records import MAIN_ARM, TrialSummary, arm_label
from banray.trial import wire


def group_label(chain: int, generation: int, arm: str = MAIN_ARM) -> str:
    return f"chain {chain} generation {generation}" if arm == MAIN_ARM else arm_label(chain, arm)


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
        reason = failure_reason(error) if error is not None else "see its MLflow run and the Ray logs"
        say(self.label, f"trial {wire.trial_number(trial.config)} failed: {reason}")


def failure_reason(error: BaseException) -> str:
    """One line saying why a trial failed: the error's first line."""
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def tune_verbosity() -> int:
    return 1 if sys.stdout.isatty() else 0

