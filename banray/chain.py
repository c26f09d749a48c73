"""A generation chain: generation 0 on labels, then each generation taught by the previous one's best.

Each (chain, generation) is one Ray Tune run of `search.trials` trials. A chain runs as its own
Ray task, so chains proceed independently: generation k of a chain starts as soon as generation
k − 1 of that chain has finished, whatever the other chains are doing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ray
import ray.tune as tune

from banray import checkpoint, tracking
from banray.evaluate import ensemble_members, ensemble_scores
from banray.spec import SweepSpec
from banray.tasks import Task, make_task
from banray.trial import TRIAL_RESOURCES, TrialRuntime, run_trial


@dataclass(frozen=True)
class SweepContext:
    """What every chain of a sweep shares; built once by the driver."""

    spec: SweepSpec
    sweep_dir: str
    tracking: tracking.Tracking
    experiment_id: str
    slots_actor: str  # name of the WorkerSlots actor
    max_concurrent_trials: int

    @property
    def train_storage(self) -> str:
        return f"{self.sweep_dir}/train"

    @property
    def tune_storage(self) -> str:
        return f"{self.sweep_dir}/tune"


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
    seed: int | None = None
    val_error: float | None = None
    val_nll: float | None = None
    test_error: float | None = None
    test_nll: float | None = None
    checkpoint: str | None = None
    model_uri: str | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
    message: str | None = None


@dataclass
class EnsembleRecord:
    """Ens*k (BANE, paper Eq. 4): the average of the softmax outputs of `members` on the test set."""

    k: int
    members: list[int]  # generations
    test_error: float
    test_nll: float


@dataclass
class ChainResult:
    chain: int
    generations: list[GenerationRecord]
    ensembles: list[EnsembleRecord]
    mlflow_run_id: str | None  # the chain's ensemble run, if it has ensembles


def _say(chain: int, generation: int, text: str) -> None:
    print(f"[banray] chain {chain} generation {generation}: {text}", flush=True)


def run_generation(
    ctx: SweepContext, chain: int, generation: int, teacher: GenerationRecord | None, task: Task
) -> tuple[GenerationRecord, Any]:
    """Run one generation's trial group; returns its record and its best model."""
    spec = ctx.spec
    settings = spec.generation_settings(chain, generation, teacher.checkpoint if teacher else None)
    role = "teacher" if generation == 0 else "student"
    run_id = tracking.start_run(
        ctx.tracking,
        ctx.experiment_id,
        run_name=f"chain{chain}-gen{generation}",
        tags=tracking.banray_tags(
            sweep=spec.name,
            chain=chain,
            generation=generation,
            role=role,
            teacher_run_id=teacher.mlflow_run_id if teacher else None,
        ),
        params=settings,
    )
    record = GenerationRecord(
        chain=chain,
        generation=generation,
        role=role,
        arch=settings["model"]["arch"],
        objective=settings["distill"]["objective"],
        status="failed",
        mlflow_run_id=run_id,
        teacher_checkpoint=teacher.checkpoint if teacher else None,
        teacher_run_id=teacher.mlflow_run_id if teacher else None,
    )
    runtime = TrialRuntime(ctx.tracking, ctx.experiment_id, run_id, ctx.train_storage, spec.resources, ctx.slots_actor)
    tuner = tune.Tuner(
        tune.with_resources(run_trial, TRIAL_RESOURCES),
        param_space={
            **settings,
            "runtime": runtime.to_config(),
            "trial": tune.grid_search(list(range(spec.search.trials))),
        },
        tune_config=tune.TuneConfig(
            max_concurrent_trials=ctx.max_concurrent_trials,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(name=f"chain{chain}-gen{generation}", storage_path=ctx.tune_storage, verbose=0),
    )
    _say(chain, generation, f"{spec.search.trials} trial(s) of {record.arch} with objective '{record.objective}'")
    grid = tuner.fit()

    metric = spec.search.metric
    finished = [r.metrics for r in grid if r.error is None and r.metrics and "checkpoint" in r.metrics]
    record.trials = [
        {k: m[k] for k in ("trial", "seed", "val_error", "val_nll", "best_epoch", "checkpoint", "mlflow_run_id")}
        for m in sorted(finished, key=lambda m: m["trial"])
    ]
    if not finished:
        record.message = f"all {spec.search.trials} trial(s) failed; see the Ray logs and the MLflow trial runs"
        tracking.end_run(ctx.tracking, run_id, "FAILED")
        _say(chain, generation, record.message)
        return record, None

    best = min(finished, key=lambda m: (m[metric], m["trial"]))
    model, _ = checkpoint.load(best["checkpoint"])
    # The test split is touched once per finished generation, for the selected model only.
    test = task.score(model, "test")
    record.test_error, record.test_nll = test.error, test.nll
    record.status = "finished"
    record.best_trial, record.best_trial_run_id = best["trial"], best["mlflow_run_id"]
    record.best_epoch, record.seed, record.checkpoint = best["best_epoch"], best["seed"], best["checkpoint"]
    record.val_error, record.val_nll = best["val_error"], best["val_nll"]

    client = ctx.tracking.client()
    tracking.log_metrics(
        client,
        run_id,
        {"best_val_error": record.val_error, "best_val_nll": record.val_nll, "test_error": record.test_error,
         "test_nll": record.test_nll},
    )
    client.set_tag(run_id, "banray.best_trial_run_id", record.best_trial_run_id)
    client.set_tag(run_id, "banray.checkpoint", record.checkpoint)
    record.model_uri = tracking.log_model(ctx.tracking, run_id, model, task.input_example())
    _say(
        chain,
        generation,
        f"best trial {record.best_trial} (epoch {record.best_epoch}): val_error {100 * record.val_error:.2f}%, "
        f"test_error {100 * record.test_error:.2f}%, test NLL {record.test_nll:.3f}",
    )
    return record, model


def evaluate_ensembles(
    ctx: SweepContext, chain: int, models: dict[int, Any], task: Task
) -> tuple[list[EnsembleRecord], str | None]:
    """Ens*k of the chain's finished generations on the test set, logged to a run of their own."""
    members_of = ensemble_members(sorted(models), ctx.spec.ensembles.include_teacher)
    predictions = {g: task.predict(model, "test") for g, model in models.items()} if members_of else {}
    if not members_of or any(p is None for p in predictions.values()):
        return [], None
    labels = next(iter(predictions.values()))[1]
    ensembles = []
    for k, members in members_of.items():
        scores = ensemble_scores([predictions[g][0] for g in members], labels)
        ensembles.append(EnsembleRecord(k, members, scores.error, scores.nll))
        _say(chain, members[-1], f"Ens*{k} of generations {members}: test_error {100 * scores.error:.2f}%")
    run_id = tracking.start_run(
        ctx.tracking,
        ctx.experiment_id,
        run_name=f"chain{chain}-ensembles",
        tags=tracking.banray_tags(sweep=ctx.spec.name, chain=chain, role="ensemble"),
        params={f"ens{e.k}.members": e.members for e in ensembles},
    )
    client = ctx.tracking.client()
    for e in ensembles:
        tracking.log_metrics(client, run_id, {f"ens{e.k}_test_error": e.test_error, f"ens{e.k}_test_nll": e.test_nll})
    tracking.end_run(ctx.tracking, run_id)
    return ensembles, run_id


@ray.remote(num_cpus=0, max_retries=0)
def run_chain(ctx: SweepContext, chain: int) -> ChainResult:
    task = make_task(ctx.spec.data, ctx.spec.train)
    records: list[GenerationRecord] = []
    models: dict[int, Any] = {}
    teacher = None
    for generation in range(ctx.spec.generations + 1):
        record, model = run_generation(ctx, chain, generation, teacher, task)
        records.append(record)
        if record.status != "finished":
            _say(chain, generation, "chain stopped: no trial of this generation finished")
            break
        models[generation] = model
        teacher = record
    ensembles, ensemble_run_id = evaluate_ensembles(ctx, chain, models, task)
    return ChainResult(chain, records, ensembles, ensemble_run_id)
