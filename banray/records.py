"""What a sweep produces, as plain records that cross processes and land in state.json and report.json:
a trial's summary, a generation's record, an ensemble's scores, a chain's result, a sweep's result.
Nothing here runs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

SUMMARY = "banray_summary"  # the key that marks a trial's last report
CONTROL_ARM = "control"  # the control arm (the teacher's recipe, fresh seeds: Teacher′) where a generation stands


@dataclass(frozen=True)
class TrialSummary:
    """A trial's last report: its best epoch and that epoch's checkpoint, or why it cannot produce a model
    (`failure`: a diverged loss). A trial that ASHA stopped early makes none."""

    trial: int
    seed: int
    failure: str | None = None
    best_epoch: int | None = None
    value: float | None = None  # search.metric at the best epoch
    val_error: float | None = None
    val_nll: float | None = None
    checkpoint: str | None = None

    @property
    def finished(self) -> bool:
        return self.failure is None

    def to_report(self, metric: str) -> dict[str, Any]:
        """As a Tune result. Tune wants the metric in every result: a failure's is the worst, so the searcher
        stays away from its settings."""
        return {**dataclasses.asdict(self), metric: math.inf if self.value is None else self.value, SUMMARY: True}

    @classmethod
    def from_report(cls, result: dict[str, Any] | None) -> TrialSummary | None:
        """The summary in a Tune result, or None if the result is an epoch's."""
        if not (result or {}).get(SUMMARY):
            return None
        return cls(**{f.name: result.get(f.name) for f in dataclasses.fields(cls)})


@dataclass
class GenerationRecord:
    chain: int
    generation: int
    role: str
    arch: str
    objective: str
    status: str  # "finished" or "failed"
    mlflow_run_id: str
    teacher_checkpoint: str | None
    teacher_run_id: str | None
    best_trial: int | None = None
    best_trial_run_id: str | None = None
    best_epoch: int | None = None
    best_settings: dict[str, Any] = field(default_factory=dict)  # the searched values of the best trial
    seed: int | None = None
    val_error: float | None = None
    val_nll: float | None = None
    test_error: float | None = None
    test_nll: float | None = None
    test_ece: float | None = None  # expected calibration error, 15 bins
    checkpoint: str | None = None
    model_uri: str | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
    message: str | None = None
    # distill.teacher_from 'ensemble': the checkpoints and MLflow runs of generations 0 … k − 1 of the chain,
    # the members of its ensemble teacher in generation order (teacher_checkpoint is the last); else empty.
    teacher_checkpoints: list[str] = field(default_factory=list)
    teacher_run_ids: list[str] = field(default_factory=list)


@dataclass
class EnsembleRecord:
    """Ens*k (BANE, paper Eq. 4): the average of the softmax outputs of `members` on the test set."""

    k: int
    members: list[int]  # generations
    test_error: float
    test_nll: float
    test_ece: float | None = None


@dataclass
class ChainResult:
    chain: int
    generations: list[GenerationRecord]
    ensembles: list[EnsembleRecord]
    mlflow_run_id: str | None  # the chain's ensemble run, if it has ensembles
    stopped: str | None = None  # why the chain ended before its last generation
    # The seed-noise control arm: teacher′ is a label-only model with the teacher's recipe and a fresh
    # seed; control_ensemble averages teacher and teacher′, the baseline to set against BANE.
    control: GenerationRecord | None = None
    control_ensemble: EnsembleRecord | None = None


@dataclass
class ChainEnsembles:
    ensembles: list[EnsembleRecord]
    control_ensemble: EnsembleRecord | None  # Teacher + Teacher′, the baseline BANE is set against
    mlflow_run_id: str | None


@dataclass
class SweepResult:
    """What a sweep hands back: its report, where its folder is, and the report files in it."""

    report: dict[str, Any]
    sweep_dir: str  # a local path or an s3:// URI
    files: list[str]  # report files in the sweep folder
