"""What a sweep produces, as plain records that cross processes and land in state.json and report.json:
a trial's summary, a generation's record, an ensemble's scores, a chain's result, a sweep's result.
Nothing here runs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

SUMMARY = "banray_summary"  # the key that marks a trial's last report
MAIN_ARM = "main"  # a chain's generations
# A chain's side arms, each one label-only model trained beside its generations: the control arm's teacher′s
# (the teacher's recipe, fresh seeds: "control", "control2", …), the equal-budget model (the recipe stretched to
# the chain's total epochs) and the label-smoothing model (the recipe with label smoothing).
CONTROL_ARM = "control"
BUDGET_ARM = "budget"
SMOOTHING_ARM = "smoothing"


# What each kind of side arm is (by its role), for notes and logs.
ARM_RECIPES = {
    CONTROL_ARM: "a teacher′, the teacher's recipe with a fresh seed: it measures how far a fresh seed alone moves "
                 "the teacher, and with the Teacher makes the same-size baselines of the ensembles.",
    BUDGET_ARM: "the teacher's recipe stretched to the chain's total epochs ((generations + 1) × train.epochs, "
                "lr_milestones scaled): the equal-budget baseline of the last BAN generation.",
    SMOOTHING_ARM: "the teacher's recipe with label smoothing (objective 'ls'): the label-smoothing baseline of BAN-1.",
}


def control_arm(index: int) -> str:
    """The arm of a chain's teacher′ number `index` (from 0): "control", then "control2", "control3", …"""
    return CONTROL_ARM if index == 0 else f"{CONTROL_ARM}{index + 1}"


def is_control(arm: str) -> bool:
    """Whether `arm` names a teacher′ as control_arm does: "control", "control2", "control3", …"""
    number = arm.removeprefix(CONTROL_ARM)
    return arm.startswith(CONTROL_ARM) and (number == "" or (number.isascii() and number.isdigit()
                                                             and not number.startswith("0") and int(number) >= 2))


def arm_title(arm: str) -> str:
    """How logs and notes name a side arm."""
    if is_control(arm):
        return f"control (teacher′{arm.removeprefix(CONTROL_ARM)})"
    return {BUDGET_ARM: "equal-budget model", SMOOTHING_ARM: "label-smoothing model"}[arm]


def arm_label(chain: int, arm: str) -> str:
    return f"chain {chain} {arm_title(arm)}"


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
    # Fidelity to its teacher on the test split: top-1 agreement and mean KL(teacher ‖ student) in nats
    test_agreement: float | None = None
    test_teacher_kl: float | None = None
    checkpoint: str | None = None
    model_uri: str | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
    message: str | None = None
    # distill.teacher_from 'ensemble': the checkpoints and MLflow runs of generations 0 … k − 1 of the chain,
    # the members of its ensemble teacher in generation order (teacher_checkpoint is the last); else empty.
    teacher_checkpoints: list[str] = field(default_factory=list)
    teacher_run_ids: list[str] = field(default_factory=list)
    arm: str = MAIN_ARM  # its chain's generations, or one of its side arms


@dataclass
class EnsembleRecord:
    """Ens*k (BANE, paper Eq. 4), or a control ensemble (the Teacher and k − 1 teacher′s): the average of the
    softmax outputs of `members` on the test set."""

    k: int
    members: list[int | str]  # generations, and side arms by name
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
    # The side arms by name (control, control2, …, budget, smoothing); control_ensembles average the Teacher and
    # k − 1 teacher′s (k = 2 … teachers + 1), the same-size baselines to set against BANE's Ens*k.
    arms: dict[str, GenerationRecord] = field(default_factory=dict)
    control_ensembles: list[EnsembleRecord] = field(default_factory=list)


@dataclass
class ChainEnsembles:
    ensembles: list[EnsembleRecord]
    control_ensembles: list[EnsembleRecord]  # the Teacher and k − 1 teacher′s, for k = 2 … teachers + 1
    mlflow_run_id: str | None


@dataclass
class SweepResult:
    """What a sweep hands back: its report, where its folder is, and the report files in it."""

    report: dict[str, Any]
    sweep_dir: str  # a local path or an s3:// URI
    files: list[str]  # report files in the sweep folder
