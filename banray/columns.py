"""The report's column names and the comparisons between them. The report, MLflow's tracking, the plan, the
spec's checks and the evaluations name columns alike, and only the report needs the statistics (scipy) and plots
behind it: the evaluations' process imports none."""

from __future__ import annotations

from banray.records import BUDGET_ARM, CONTROL_ARM, MAIN_ARM, SMOOTHING_ARM

TEACHER_COLUMN = "Teacher"
CONTROL_COLUMN = "Teacher′"  # the first teacher′: the teacher's recipe with a fresh seed
CONTROL_ENSEMBLE_COLUMN = "Teacher+Teacher′"
EQUAL_BUDGET_COLUMN = "Equal-budget"  # one model trained for the chain's total epochs
LABEL_SMOOTHING_COLUMN = "Label-smoothing"  # the teacher's recipe with label smoothing


def generation_column(generation: int) -> str:
    return TEACHER_COLUMN if generation == 0 else f"BAN-{generation}"


def ensemble_column(k: int) -> str:
    return f"Ens*{k}"


def control_ensemble_column(k: int) -> str:
    """The Teacher and k − 1 teacher′s averaged: the same-size baseline of Ens*k."""
    return CONTROL_ENSEMBLE_COLUMN if k == 2 else f"Teacher+{k - 1}×Teacher′"


def is_control_ensemble(column: str) -> bool:
    return column.startswith("Teacher+")


def report_column(generation: int, arm: str) -> str:
    """The column a generation or side arm fills: Teacher, BAN-k, Teacher′ (and Teacher′2 … for the further
    teacher′s, which the table shows only inside the control ensembles), Equal-budget or Label-smoothing."""
    if arm == MAIN_ARM:
        return generation_column(generation)
    if arm.startswith(CONTROL_ARM):
        return CONTROL_COLUMN + arm.removeprefix(CONTROL_ARM)
    return {BUDGET_ARM: EQUAL_BUDGET_COLUMN, SMOOTHING_ARM: LABEL_SMOOTHING_COLUMN}[arm]


def report_columns(generations: int, ensemble_sizes: list[int], teachers: int, equal_budget: bool,
                   label_smoothing: bool) -> list[str]:
    """The table's columns in order: Teacher, BAN-1 … BAN-G, Ens*k, then the control arms: Teacher′, the control
    ensembles (k = 2 … teachers + 1), Equal-budget, Label-smoothing."""
    columns = [generation_column(g) for g in range(generations + 1)]
    columns += [ensemble_column(k) for k in sorted(ensemble_sizes)]
    columns += [CONTROL_COLUMN] * (teachers > 0) + [control_ensemble_column(k) for k in range(2, teachers + 2)]
    return columns + [EQUAL_BUDGET_COLUMN] * equal_budget + [LABEL_SMOOTHING_COLUMN] * label_smoothing


def own_baseline(column: str, generations: int) -> str | None:
    """The baseline a column is set against besides its Teacher: Ens*k against the Teacher with k − 1 teacher′s
    (never a smaller ensemble), Equal-budget against the last BAN generation (the same total epochs),
    Label-smoothing against BAN-1 (one smoothed model against one distilled model)."""
    if column.startswith("Ens*"):
        return control_ensemble_column(int(column.removeprefix("Ens*")))
    return {EQUAL_BUDGET_COLUMN: generation_column(generations), LABEL_SMOOTHING_COLUMN: generation_column(1)}.get(column)


def comparisons(columns: list[str], generations: int) -> list[tuple[str, str]]:
    """Every (column, baseline) the report compares, both among `columns`: each column minus the Teacher, then
    each column minus its own baseline."""
    pairs = [(column, TEACHER_COLUMN) for column in columns if column != TEACHER_COLUMN]
    return pairs + [(column, own_baseline(column, generations)) for column in columns
                    if own_baseline(column, generations) in columns]


def comparison_name(column: str, baseline: str) -> str:
    return f"{column} vs {baseline}"


def metric_slug(column: str) -> str:
    """An MLflow-safe name for a column: teacher, ban1, ens2, control, control_ensemble (control_ensemble3 for the
    Teacher and 2 teacher′s), equal_budget, label_smoothing."""
    fixed = {TEACHER_COLUMN: "teacher", CONTROL_COLUMN: "control", CONTROL_ENSEMBLE_COLUMN: "control_ensemble",
             EQUAL_BUDGET_COLUMN: "equal_budget", LABEL_SMOOTHING_COLUMN: "label_smoothing"}
    if column in fixed:
        return fixed[column]
    if is_control_ensemble(column):
        return f"control_ensemble{int(column.removeprefix('Teacher+').partition('×')[0]) + 1}"
    return column.lower().replace("-", "").replace("*", "")
