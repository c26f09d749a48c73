"""A generation group's MLflow run: created by the driver before the group starts (so the sweep state can name
it), nested under its chain's run, and described in words (what it is, its teacher, its scores once known)."""

from __future__ import annotations

from typing import Any

from banray.columns import report_column
from banray.records import ARM_RECIPES, MAIN_ARM, GenerationRecord
from banray.results import tracking
from banray.spec import group_name, role
from banray.sweep.context import SweepContext


def objective_label(objective: Any) -> str:
    return objective if isinstance(objective, str) else "search over " + "|".join(map(str, objective["choice"]))


def start_generation_run(
    ctx: SweepContext, chain: int, generation: int, teacher: GenerationRecord | None, arm: str = MAIN_ARM
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
    tags = tracking.group_tags("generation", ctx.spec.name, chain, generation, arm, role(generation, arm),
                               teacher_run_id=teacher_run_id)
    return tracking.start_run(
        ctx.tracking,
        ctx.experiment_id,
        run_name=group_name(chain, generation, arm),
        tags={**tags, tracking.NOTE: generation_note(ctx, chain, generation, arm, teacher_run_id)},
        params=settings,
        parent_run_id=chain_run,
    )


def generation_note(ctx: SweepContext, chain: int, generation: int, arm: str, teacher_run_id: str | None,
                    record: GenerationRecord | None = None) -> str:
    """A generation run's description: what it is, its teacher (a link to its run), and once `record` is
    evaluated, its scores."""
    if arm != MAIN_ARM:
        what = f"a control arm of chain {chain}, trained from scratch: {ARM_RECIPES[role(0, arm)]}"
    elif teacher_run_id is None:
        what = f"the teacher of chain {chain}, trained from scratch"
    else:
        teacher = f"[{group_name(chain, generation - 1)}]({tracking.run_link(ctx.experiment_id, teacher_run_id)})"
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

