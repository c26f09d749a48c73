"""The report's column names. The report, MLflow's tracking, the plan and the evaluations name columns alike,
and only the report needs the statistics (scipy) and plots behind it: the evaluations' process imports none."""

from __future__ import annotations

TEACHER_COLUMN = "Teacher"
CONTROL_COLUMN = "Teacher′"  # the control arm: the teacher's recipe with a fresh seed
CONTROL_ENSEMBLE_COLUMN = "Teacher+Teacher′"


def generation_column(generation: int) -> str:
    return TEACHER_COLUMN if generation == 0 else f"BAN-{generation}"


def ensemble_column(k: int) -> str:
    return f"Ens*{k}"


def report_column(generation: int, arm: str) -> str:
    """The column a generation fills: Teacher, BAN-k, or the control arm's Teacher′."""
    return CONTROL_COLUMN if arm == "control" else generation_column(generation)
