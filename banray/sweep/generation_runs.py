"""A generation group's MLflow run: created by the driver before the group starts (so the sweep state can name
it), nested under its chain's run, and described in words (what it is, its teacher, its scores once known)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from banray.columns import report_column
from banray.records import ARM_RECIPES, MAIN_ARM, GenerationRecord
from banray.results import tracking
from banray.spec import SweepSpec, group_name, role
from banray.sweep.context import SweepContext


def objective_label(objective: Any) -> str:
    return objective if isinstance(objective, str) else "search over " + "|".join(map(str, objective["choice"]))


def ensemble_teacher(spec: SweepSpec, teacher: GenerationRecord | None) -> tuple[list[str], list[str]]:
    """(checkpoints, MLflow run ids) of generations 0 … k − 1 of a chain in order, the members of generation k's
    ensemble teacher (distill.teacher_from 'ensemble'), from the record of generation k − 1, which lists its own
    members: the DAG hands a group its predecessor's record alone. ([], []) for any other teacher."""
    if teacher is None or spec.distill.teacher_from != "ensemble":
        return [], []
    return [*teacher.teacher_checkpoints, teacher.checkpoint], [*teacher.teacher_run_ids, teacher.mlflow_run_id]


def group_settings(spec: SweepSpec, chain: int, generation: int, teacher: GenerationRecord | None,
                   arm: str = MAIN_ARM) -> dict[str, Any]:
    """The settings of a group whose predecessor's record is `teacher` (None for generation 0)."""
    members, _ = ensemble_teacher(spec, teacher)
    return spec.generation_settings(chain, generation, teacher.checkpoint if teacher else None, arm, members)


def start_generation_run(
    ctx: SweepContext, chain: int, generation: int, teacher: GenerationRecord | None, arm: str = MAIN_ARM
) -> str:
    """The group's MLflow run, created by the driver so the sweep state can name it before the group
    starts (a resumed sweep continues that run). It is nested under its chain's run: its teacher's, or a new
    one for a chain's first group (its teacher, its control arm) and for a teacher run from before chain runs."""
    settings = group_settings(ctx.spec, chain, generation, teacher, arm)
    teacher_run_id = teacher.mlflow_run_id if teacher else None
    chain_run = teacher_run_id and tracking.chain_run_of(ctx.tracking, teacher_run_id)
    if not chain_run:
        chain_run = tracking.start_chain_run(ctx.tracking, ctx.experiment_id, ctx.spec.name, chain, arm,
                                             ctx.spec.generations)
    tags = tracking.group_tags("generation", ctx.spec.name, chain, generation, arm, role(generation, arm),
                               teacher_run_id=teacher_run_id)
    return tracking.start_run(
        ctx.tracking,
        ctx.experiment_id,
        run_name=group_name(chain, generation, arm),
        tags={**tags, tracking.NOTE: generation_note(ctx, chain, generation, arm, teacher_run_id,
                                                    ensemble_run_ids=ensemble_teacher(ctx.spec, teacher)[1])},
        params=settings,
        parent_run_id=chain_run,
    )


def generation_note(ctx: SweepContext, chain: int, generation: int, arm: str, teacher_run_id: str | None,
                    record: GenerationRecord | None = None, ensemble_run_ids: Sequence[str] = ()) -> str:
    """A generation run's description: what it is, its teacher (a link to its run, or to each member's of an
    ensemble teacher), and once `record` is evaluated, its scores."""
    if arm != MAIN_ARM:
        what = f"a control arm of chain {chain}, trained from scratch: {ARM_RECIPES[role(0, arm)]}"
    elif teacher_run_id is None:
        what = f"the teacher of chain {chain}, trained from scratch"
    elif ensemble_run_ids:
        members = ", ".join(_run_link(ctx, chain, g, run_id) for g, run_id in enumerate(ensemble_run_ids))
        what = (f"generation {generation} of chain {chain}, distilled from an ensemble teacher: the average of the "
                f"softmax outputs of {members}")
    else:
        what = f"generation {generation} of chain {chain}, distilled from its teacher " + _run_link(
            ctx, chain, generation - 1, teacher_run_id)
    text = (f"**{report_column(generation, arm)}**: {what} (sweep `{ctx.spec.name}`). The best of "
            f"{ctx.spec.search.trials} trial(s) on validation `{ctx.spec.search.metric}`; the trials' runs are "
            "nested below.")
    if record is not None and record.test_error is not None:
        ece = f", ECE {100 * record.test_ece:.2f}%" if record.test_ece is not None else ""
        text += (f"\n\nBest trial {record.best_trial} (epoch {record.best_epoch}): validation error "
                 f"{100 * record.val_error:.2f}%; test error {100 * record.test_error:.2f}%, test NLL "
                 f"{record.test_nll:.3f}{ece} (its model, evaluated once on the test split).")
    return tracking.note(text)  # an ensemble teacher of many generations links them all


def _run_link(ctx: SweepContext, chain: int, generation: int, run_id: str) -> str:
    return f"[{group_name(chain, generation)}]({tracking.run_link(ctx.experiment_id, run_id)})"
