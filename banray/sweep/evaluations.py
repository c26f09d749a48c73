"""A finished generation's follow-up work: its selected model evaluated once on the test split and
logged to MLflow with its fidelity to its teacher (beside the next generation, off the chain's critical path),
and at a chain's end the BANE ensembles of its generations (paper Eq. 4) and the control ensembles (the Teacher
and k − 1 teacher′s)."""

from __future__ import annotations

import dataclasses

import torch

from banray.catalog.scores import ensemble_members, ensemble_scores, fidelity
from banray.columns import control_ensemble_column, ensemble_column, metric_slug
from banray.records import MAIN_ARM, ChainEnsembles, EnsembleRecord, GenerationRecord, control_arm
from banray.results import tracking
from banray.storage import SWEEP_FILES, with_retries
from banray.sweep.context import SweepContext
from banray.sweep.generation_runs import generation_note
from banray.sweep.progress import group_label, say
from banray.training import checkpoint
from banray.training.tasks import make_task


def needs_evaluation(record: GenerationRecord) -> bool:
    return record.status == "finished" and record.model_uri is None


def _load(record_checkpoint: str):
    model, _ = with_retries(f"loading {record_checkpoint}", lambda: checkpoint.load(record_checkpoint, storage=SWEEP_FILES))
    # Eval mode for good: MLflow runs the model on its input example, which in train mode would move
    # BatchNorm's running statistics away from the checkpoint's.
    return model.eval()


def evaluate_group(ctx: SweepContext, record: GenerationRecord) -> GenerationRecord:
    """A selected generation's test evaluation, its fidelity to its teacher and its MLflow model. It runs beside
    the next generation (which needs only the checkpoint), so it adds nothing to the chain's critical path."""
    model = _load(record.checkpoint)
    task = make_task(ctx.spec.data, ctx.spec.train)
    # The test split is touched once per finished generation, for the selected model only.
    test = task.score(model, "test")
    record = dataclasses.replace(record, test_error=test.error, test_nll=test.nll, test_ece=test.ece,
                                 **_fidelity(task, model, record))
    client = ctx.tracking.client()
    run_id = record.mlflow_run_id
    tracking.log_metrics(client, run_id, _test_metrics(record), step=record.generation)
    tracking.log_scores(ctx.tracking, record)  # in %, at step = generation, here and on the chain's run
    client.set_tag(run_id, tracking.NOTE,
                   generation_note(ctx, record.chain, record.generation, record.arm, record.teacher_run_id, record,
                                   record.teacher_run_ids))
    client.set_tag(run_id, "banray.best_trial_run_id", record.best_trial_run_id)
    client.set_tag(run_id, "banray.checkpoint", record.checkpoint)
    for key, value in record.best_settings.items():
        client.log_param(run_id, f"best.{key}", value)
    record.model_uri = tracking.log_model(ctx.tracking, run_id, model, task.input_example())
    fidelity = ("" if record.test_agreement is None else
                f"; agrees with its teacher on {100 * record.test_agreement:.2f}% (KL {record.test_teacher_kl:.4f} nats)")
    say(
        group_label(record.chain, record.generation, record.arm),
        f"test_error {100 * record.test_error:.2f}%, test NLL {record.test_nll:.3f}"
        + (f", test ECE {100 * record.test_ece:.2f}%" if record.test_ece is not None else "")
        + f"{fidelity} (the selected model, evaluated once on the test split)",
    )
    return record


def _test_metrics(record: GenerationRecord) -> dict[str, float]:
    optional = {"test_ece": record.test_ece, "test_agreement": record.test_agreement,
                "test_teacher_kl": record.test_teacher_kl}
    return {"best_val_error": record.val_error, "best_val_nll": record.val_nll, "test_error": record.test_error,
            "test_nll": record.test_nll, **{key: value for key, value in optional.items() if value is not None}}


def _fidelity(task, model, record: GenerationRecord) -> dict[str, float]:
    """A student's top-1 agreement with its teacher and KL(teacher ‖ student) on the test split (none for a
    model without a teacher, or a language model). An ensemble teacher's prediction is its members' averaged
    softmax, the target the student learned from."""
    if record.teacher_checkpoint is None:
        return {}
    student = task.predict(model, "test")
    if student is None:
        return {}
    members = record.teacher_checkpoints or [record.teacher_checkpoint]
    teacher = torch.stack([task.predict(_load(member), "test")[0] for member in members]).mean(dim=0)
    found = fidelity(teacher, student[0])
    return {"test_agreement": found.agreement, "test_teacher_kl": found.kl}


def run_ensembles(
    ctx: SweepContext, chain: int, records: list[GenerationRecord], arms: dict[str, GenerationRecord]
) -> ChainEnsembles:
    """Ens*k of the chain's finished generations, and the control ensembles (the Teacher and k − 1 teacher′s),
    on the test set, logged to a run of their own."""
    finished = {r.generation: r for r in records if r.status == "finished"}
    members_of = ensemble_members(sorted(finished), ctx.spec.ensembles.include_teacher)
    teachers = _control_members(finished, arms, ctx.spec.control.teachers)
    if not members_of and len(teachers) < 2:
        return ChainEnsembles([], [], None)
    task = make_task(ctx.spec.data, ctx.spec.train)
    predictions = {g: task.predict(_load(r.checkpoint), "test") for g, r in finished.items()}
    if any(p is None for p in predictions.values()):  # language models: no ensembles
        return ChainEnsembles([], [], None)
    predictions.update({arm: task.predict(_load(arms[arm].checkpoint), "test") for arm in teachers[1:]})
    labels = next(iter(predictions.values()))[1]

    def averaged(k: int, members: list) -> EnsembleRecord:
        scores = ensemble_scores([predictions[m][0] for m in members], labels)
        return EnsembleRecord(k, members, scores.error, scores.nll, scores.ece)

    ensembles = [averaged(k, members) for k, members in members_of.items()]
    controls = [averaged(k, teachers[:k]) for k in range(2, len(teachers) + 1)]
    named = [(ensemble_column(e.k), e) for e in ensembles] + [(control_ensemble_column(e.k), e) for e in controls]
    for column, e in named:
        say(f"chain {chain}", f"{column} of {e.members}: test_error {100 * e.test_error:.2f}%")
    run_id = _start_ensembles_run(ctx, chain, records, ensembles, controls)
    client = ctx.tracking.client()
    for e in ensembles:
        for target in (run_id, finished[e.members[-1]].mlflow_run_id):  # and next to its last member
            tracking.log_metrics(client, target, _ensemble_metrics(f"ens{e.k}", e), step=e.members[-1])
    for e in controls:
        tracking.log_metrics(client, run_id, _ensemble_metrics(metric_slug(control_ensemble_column(e.k)), e))
    tracking.end_run(ctx.tracking, run_id)
    return ChainEnsembles(ensembles, controls, run_id)


def _control_members(finished: dict[int, GenerationRecord], arms: dict[str, GenerationRecord],
                     teachers: int) -> list[int | str]:
    """The Teacher (generation 0) and the chain's finished teacher′s in order, up to the first one missing:
    the members of its control ensembles; empty without a finished Teacher."""
    members: list[int | str] = [0] if 0 in finished else []
    for arm in (control_arm(i) for i in range(teachers)):
        if not members or arms.get(arm) is None or arms[arm].status != "finished":
            break
        members.append(arm)
    return members


def _ensemble_metrics(prefix: str, ensemble: EnsembleRecord) -> dict[str, float]:
    return {f"{prefix}_test_error": ensemble.test_error, f"{prefix}_test_nll": ensemble.test_nll,
            f"{prefix}_test_ece": ensemble.test_ece}


def _start_ensembles_run(ctx: SweepContext, chain: int, records: list[GenerationRecord],
                         ensembles: list[EnsembleRecord], controls: list[EnsembleRecord]) -> str:
    """The run of a chain's ensembles, nested under the chain's run."""
    columns = [ensemble_column(e.k) for e in ensembles] + [control_ensemble_column(e.k) for e in controls]
    text = (f"{', '.join(f'`{c}`' for c in columns)} of chain {chain} (sweep `{ctx.spec.name}`), on the test split: "
            "`Ens*k` averages the softmax outputs of the chain's last k generations (members in the params), "
            "`Teacher+Teacher′` those of its Teacher and its first teacher′ (and `Teacher+k×Teacher′` of the "
            "Teacher and k teacher′s, the same-size baselines of `Ens*k`); each `Ens*k` at the step of its last member.")
    return tracking.start_run(
        ctx.tracking,
        ctx.experiment_id,
        run_name=f"chain{chain}-ensembles",
        tags={**tracking.banray_tags(sweep=ctx.spec.name, chain=chain, role="ensemble", level="chain", arm=MAIN_ARM,
                                     column=", ".join(columns)), tracking.NOTE: tracking.note(text)},
        params={f"ens{e.k}.members": e.members for e in ensembles}
        | {f"{metric_slug(control_ensemble_column(e.k))}.members": e.members for e in controls},
        parent_run_id=tracking.chain_run_of(ctx.tracking, records[0].mlflow_run_id),
    )
