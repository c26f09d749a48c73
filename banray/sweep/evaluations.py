"""A finished generation's follow-up work: its selected model evaluated once on the test split and
logged to MLflow (beside the next generation, off the chain's critical path), and at a chain's end the
BANE ensembles of its generations (paper Eq. 4) and Teacher + Teacher′."""

from __future__ import annotations

import dataclasses

from banray.catalog.scores import ensemble_members, ensemble_scores
from banray.columns import CONTROL_ENSEMBLE_COLUMN, ensemble_column
from banray.records import ChainEnsembles, EnsembleRecord, GenerationRecord
from banray.results import tracking
from banray.storage import SWEEP_FILES, with_retries
from banray.sweep.context import SweepContext
from banray.sweep.generation_runs import generation_note
from banray.sweep.progress import group_label, say
from banray.training import checkpoint
from banray.training.tasks import make_task


def needs_evaluation(record: GenerationRecord) -> bool:
    return record.status == "finished" and record.model_uri is None


def evaluate_group(ctx: SweepContext, record: GenerationRecord) -> GenerationRecord:
    """A selected generation's test evaluation and MLflow model. It runs beside the next generation (which
    needs only the checkpoint), so it adds nothing to the chain's critical path."""
    model, _ = with_retries(f"loading {record.checkpoint}", lambda: checkpoint.load(record.checkpoint, storage=SWEEP_FILES))
    # Eval mode for good: MLflow runs the model on its input example, which in train mode would move
    # BatchNorm's running statistics away from the checkpoint's.
    model.eval()
    task = make_task(ctx.spec.data, ctx.spec.train)
    # The test split is touched once per finished generation, for the selected model only.
    test = task.score(model, "test")
    record = dataclasses.replace(record, test_error=test.error, test_nll=test.nll, test_ece=test.ece)
    client = ctx.tracking.client()
    run_id = record.mlflow_run_id
    arm = "control" if record.role == "control" else "main"
    tracking.log_metrics(
        client,
        run_id,
        {"best_val_error": record.val_error, "best_val_nll": record.val_nll, "test_error": record.test_error,
         "test_nll": record.test_nll, **({"test_ece": record.test_ece} if record.test_ece is not None else {})},
        step=record.generation,
    )
    tracking.log_scores(ctx.tracking, record)  # in %, at step = generation, here and on the chain's run
    client.set_tag(run_id, tracking.NOTE,
                   generation_note(ctx, record.chain, record.generation, arm, record.teacher_run_id, record,
                                   record.teacher_run_ids))
    client.set_tag(run_id, "banray.best_trial_run_id", record.best_trial_run_id)
    client.set_tag(run_id, "banray.checkpoint", record.checkpoint)
    for key, value in record.best_settings.items():
        client.log_param(run_id, f"best.{key}", value)
    record.model_uri = tracking.log_model(ctx.tracking, run_id, model, task.input_example())
    label = group_label(record.chain, record.generation, arm)
    say(
        label,
        f"test_error {100 * record.test_error:.2f}%, test NLL {record.test_nll:.3f}"
        + (f", test ECE {100 * record.test_ece:.2f}%" if record.test_ece is not None else "")
        + " (the selected model, evaluated once on the test split)",
    )
    return record


def run_ensembles(
    ctx: SweepContext, chain: int, records: list[GenerationRecord], control: GenerationRecord | None
) -> ChainEnsembles:
    """Ens*k of the chain's finished generations, and Teacher + Teacher′, on the test set, logged to a run
    of their own."""
    finished = {r.generation: r for r in records if r.status == "finished"}
    members_of = ensemble_members(sorted(finished), ctx.spec.ensembles.include_teacher)
    with_control = control is not None and control.status == "finished" and 0 in finished
    if not members_of and not with_control:
        return ChainEnsembles([], None, None)
    task = make_task(ctx.spec.data, ctx.spec.train)

    def test_predictions(record: GenerationRecord):
        model, _ = with_retries(f"loading {record.checkpoint}", lambda: checkpoint.load(record.checkpoint, storage=SWEEP_FILES))
        return task.predict(model, "test")

    predictions = {g: test_predictions(r) for g, r in finished.items()}
    if any(p is None for p in predictions.values()):  # language models: no ensembles
        return ChainEnsembles([], None, None)
    labels = next(iter(predictions.values()))[1]
    ensembles = []
    for k, members in members_of.items():
        scores = ensemble_scores([predictions[g][0] for g in members], labels)
        ensembles.append(EnsembleRecord(k, members, scores.error, scores.nll, scores.ece))
        say(group_label(chain, members[-1]), f"Ens*{k} of generations {members}: test_error {100 * scores.error:.2f}%")
    control_ensemble = None
    if with_control:
        scores = ensemble_scores([predictions[0][0], test_predictions(control)[0]], labels)
        control_ensemble = EnsembleRecord(2, [0, 0], scores.error, scores.nll, scores.ece)
        say(group_label(chain, 0, "control"), f"Teacher + Teacher′: test_error {100 * scores.error:.2f}%")
    run_id = _start_ensembles_run(ctx, chain, records, ensembles, control_ensemble)
    client = ctx.tracking.client()
    for e in ensembles:
        metrics = {f"ens{e.k}_test_error": e.test_error, f"ens{e.k}_test_nll": e.test_nll,
                   f"ens{e.k}_test_ece": e.test_ece}
        for target in (run_id, finished[e.members[-1]].mlflow_run_id):  # and next to its last member
            tracking.log_metrics(client, target, metrics, step=e.members[-1])
    if control_ensemble is not None:
        tracking.log_metrics(client, run_id, {"control_ensemble_test_error": control_ensemble.test_error,
                                              "control_ensemble_test_nll": control_ensemble.test_nll,
                                              "control_ensemble_test_ece": control_ensemble.test_ece})
    tracking.end_run(ctx.tracking, run_id)
    return ChainEnsembles(ensembles, control_ensemble, run_id)


def _start_ensembles_run(ctx: SweepContext, chain: int, records: list[GenerationRecord],
                         ensembles: list[EnsembleRecord], control_ensemble: EnsembleRecord | None) -> str:
    """The run of a chain's ensembles, nested under the chain's run."""
    columns = [ensemble_column(e.k) for e in ensembles] + ([CONTROL_ENSEMBLE_COLUMN] if control_ensemble else [])
    text = (f"{', '.join(f'`{c}`' for c in columns)} of chain {chain} (sweep `{ctx.spec.name}`), on the test split: "
            "`Ens*k` averages the softmax outputs of the chain's last k generations (members in the params), "
            "`Teacher+Teacher′` those of its Teacher and its control arm's; each at the step of its last member.")
    return tracking.start_run(
        ctx.tracking,
        ctx.experiment_id,
        run_name=f"chain{chain}-ensembles",
        tags={**tracking.banray_tags(sweep=ctx.spec.name, chain=chain, role="ensemble", level="chain", arm="main",
                                     column=", ".join(columns)), tracking.NOTE: tracking.note(text)},
        params={f"ens{e.k}.members": e.members for e in ensembles},
        parent_run_id=tracking.chain_run_of(ctx.tracking, records[0].mlflow_run_id),
    )
