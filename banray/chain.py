"""Generation groups: one (chain, generation) is a Ray Tune run of `search.trials` trials.

`run_group` searches the generation's settings (Optuna, ASHA) and selects its best trial on validation;
`evaluate_group` then evaluates that model once on the test split and logs it to MLflow, beside the next
generation. At the end of a chain, `run_ensembles` evaluates the BANE ensembles of its generations. All
three run in the driver's two warm `GroupRunner` processes; the driver (banray.dag) decides when each starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Callable

import ray
import ray.tune as tune

from banray import checkpoint, tracking
from banray.evaluate import ensemble_members, ensemble_scores
from banray.search import make_search, searched_values, warm_start_point
from banray.spec import ResourcesSpec, SweepSpec
from banray.storage import keep_credentials_out_of_tune, ray_storage, with_retries
from banray.tasks import make_task
from banray.trial import TrialRuntime, group_name, run_trial, trial_resources
from banray.trial_runs import TrialRuns, trial_run_ids


@dataclass(frozen=True)
class SweepContext:
    """What every group of a sweep shares; built once by the driver."""

    spec: SweepSpec
    sweep_dir: str
    tracking: tracking.Tracking
    experiment_id: str
    slots_actor: str  # name of the WorkerSlots actor
    capacity: int  # worker slots: trials that can train at once
    tune_verbose: int  # Tune's live table only when the driver's output is a terminal

    def trials_at_once(self) -> int:
        """How many of a group's trials run at once: all the slots can take (the slots pool queues the rest)
        or, for trials that train in their own process, the group's share of the slots among the chains. A
        trial's process serves its group's next trial, so while the chains keep the slots busy, fewer
        trials at a time start fewer processes."""
        spec = self.spec
        if spec.resources.engine() == "train":
            return min(self.capacity, spec.search.trials)
        return max(1, min(spec.search.trials, self.capacity // spec.chains))

    @property
    def groups_at_once(self) -> int:
        """How many groups keep the worker slots busy: the chains' own, and control arms in the slots they leave."""
        return max(self.spec.chains, self.capacity // self.trials_at_once())

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


@ray.remote(num_cpus=0, max_restarts=0)
class GroupRunner:
    """One process for a sweep's group-level work (Tune runs, evaluations, ensembles), each call in a thread
    of its own. A process per group would import torch, Ray Tune and MLflow anew: seconds of CPU each, which
    on a small node the trials pay for. It holds no CPU: the work it starts (trials) takes worker slots.
    Work off the critical path (evaluations) runs in a second runner with a higher `niceness`, so that on a
    busy node the operating system gives the CPU to trials first."""

    def __init__(self, niceness: int = 0, tune_state_every_s: float | None = None):
        os.nice(niceness)
        if tune_state_every_s is not None:
            # How often Tune saves a run's experiment state, which a resumed sweep restores trials from.
            os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = str(tune_state_every_s)

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        return function(*args)


def start_runner(calls_at_once: int, niceness: int = 0, tune_state_every_s: float | None = None) -> ray.actor.ActorHandle:
    """A GroupRunner that runs up to `calls_at_once` calls side by side."""
    return GroupRunner.options(max_concurrency=max(1, calls_at_once)).remote(niceness, tune_state_every_s)


_registering = threading.Lock()


def registered_trainable(resources: ResourcesSpec) -> str:
    """The name of the trial trainable with its resources in Tune's registry. The registry is one per
    process and not thread-safe, and a GroupRunner's Tune runs start side by side in its threads: they
    register here, one at a time, and hand Tune the name."""
    wanted = trial_resources(resources)
    name = "banray-trial-" + "-".join(f"{key}{value:g}" for key, value in sorted(wanted.items()))
    with _registering:
        tune.register_trainable(name, tune.with_resources(run_trial, wanted))
    return name


def group_label(chain: int, generation: int, arm: str = "main") -> str:
    return f"chain {chain} control (teacher′)" if arm == "control" else f"chain {chain} generation {generation}"


def say(label: str, text: str) -> None:
    print(f"[banray] {label}: {text}", flush=True)


class TrialProgress(tune.Callback):
    """One plain log line per finished trial, marking a new best (works without a terminal)."""

    def __init__(self, label: str, metric: str):
        self.label, self.metric = label, metric
        self.best = math.inf

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        if "failure" in result:
            say(self.label, f"trial {trial.config.get('trial')} failed: {result['failure']}")
            return
        value = result.get(self.metric)
        if value is None:
            return
        if "checkpoint" not in result:
            text = f"stopped early after epoch {result.get('epoch')}: {self.metric} {value:.4f}"
        else:
            text = f"finished: {self.metric} {value:.4f}"
            if value < self.best:
                self.best = value
                text += " (new best)"
        say(self.label, f"trial {trial.config.get('trial')} {text}")

    def on_trial_error(self, iteration, trials, trial, **info):
        try:
            error = trial.get_pickled_error()
        except OSError:  # the error file is in storage, which may be away for a moment
            error = None
        reason = _failure_reason(error) if error is not None else "see its MLflow run and the Ray logs"
        say(self.label, f"trial {trial.config.get('trial')} failed: {reason}")


def _objective_label(objective: Any) -> str:
    return objective if isinstance(objective, str) else "search over " + "|".join(map(str, objective["choice"]))


def _role(generation: int, arm: str) -> str:
    return "control" if arm == "control" else "teacher" if generation == 0 else "student"


def start_generation_run(
    ctx: SweepContext, chain: int, generation: int, teacher: GenerationRecord | None, arm: str = "main"
) -> str:
    """The group's MLflow run, created by the driver so the sweep state can name it before the group
    starts (a resumed sweep continues that run)."""
    settings = ctx.spec.generation_settings(chain, generation, teacher.checkpoint if teacher else None, arm)
    return tracking.start_run(
        ctx.tracking,
        ctx.experiment_id,
        run_name=group_name(chain, generation, arm),
        tags=tracking.banray_tags(
            sweep=ctx.spec.name,
            chain=chain,
            generation=generation,
            role=_role(generation, arm),
            teacher_run_id=teacher.mlflow_run_id if teacher else None,
        ),
        params=settings,
    )


def _failure_reason(error: BaseException) -> str:
    """One line saying why a trial failed: the error's first line."""
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def run_group(
    ctx: SweepContext,
    chain: int,
    generation: int,
    teacher: GenerationRecord | None,
    run_id: str,
    restore: bool,
    arm: str = "main",
) -> GenerationRecord:
    """Run (or, with `restore`, continue an interrupted run of) one generation's Tune run; with arm
    "control", the chain's teacher′ (generation 0's recipe, fresh seeds)."""
    spec = ctx.spec
    space = spec.search_space(generation)
    settings = spec.generation_settings(chain, generation, teacher.checkpoint if teacher else None, arm)
    role = _role(generation, arm)
    name, label = group_name(chain, generation, arm), group_label(chain, generation, arm)
    if teacher is not None and spec.distill.teacher == "cached":
        # One cache of the teacher's logits per generation, in the sweep's storage; its trials build it.
        settings["teacher_cache"] = f"{ctx.sweep_dir}/teacher-cache"
    record = GenerationRecord(
        chain=chain,
        generation=generation,
        role=role,
        arch=settings["model"]["arch"],
        objective=_objective_label(settings["distill"]["objective"]),
        status="failed",
        mlflow_run_id=run_id,
        teacher_checkpoint=teacher.checkpoint if teacher else None,
        teacher_run_id=teacher.mlflow_run_id if teacher else None,
    )
    for key in space:  # the search fills these in per trial
        section, name = key.split(".")
        del settings[section][name]
    start = warm_start_point(spec, generation, teacher.best_settings if teacher else None)
    search_alg, trial_space, scheduler = make_search(spec, chain, generation, start)
    runtime = TrialRuntime(ctx.train_storage, spec.resources, ctx.slots_actor)
    trainable = registered_trainable(spec.resources)
    in_trial = spec.resources.engine() == "trial"
    keep_credentials_out_of_tune()
    tune_root, tune_fs = ray_storage(ctx.tune_storage)
    if restore and tune.Tuner.can_restore(f"{tune_root}/{name}", storage_filesystem=tune_fs):
        # Finished trials stay finished; unfinished ones continue, their Train runs from the last checkpoint.
        say(label, f"continuing its interrupted Tune run from {ctx.tune_storage}/{name}")
        tuner = tune.Tuner.restore(
            f"{tune_root}/{name}", trainable, resume_unfinished=True, resume_errored=False, storage_filesystem=tune_fs
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={**settings, "runtime": runtime.to_config(), **trial_space},
            tune_config=tune.TuneConfig(
                metric=spec.search.metric,
                mode="min",
                search_alg=search_alg,
                scheduler=scheduler,
                num_samples=spec.search.trials if search_alg else 1,
                max_concurrent_trials=ctx.trials_at_once(),
                trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
                # A trial that trains in its own process hands that process to the group's next trial:
                # torch and the data are loaded once per group, not once per trial.
                reuse_actors=in_trial,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=tune_root,
                storage_filesystem=tune_fs,
                verbose=ctx.tune_verbose,
                callbacks=[TrialProgress(label, spec.search.metric), TrialRuns(ctx.tracking, ctx.experiment_id, run_id)],
                # Ray Train restarts its own workers; a trial that trains in its process is restarted by Tune.
                failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures if in_trial else 0),
                # Tune keeps every checkpoint while the group runs: with num_to_keep it deletes the one its
                # last saved experiment state may still name, which a restore after a killed driver needs.
                # The group prunes them once it is over (_prune_checkpoints); the state is saved every
                # train.checkpoint_every_s (the runner's TUNE_GLOBAL_CHECKPOINT_S).
            ),
        )
    grid = tuner.fit()
    _prune_checkpoints(grid)

    metric = spec.search.metric
    results = [r for r in grid if r.error is None and r.metrics]
    finished = [r for r in results if "checkpoint" in r.metrics]
    stopped = [r for r in results if "checkpoint" not in r.metrics and "failure" not in r.metrics]
    failed = [r for r in grid if r.error is not None or "failure" in (r.metrics or {})]
    run_ids = trial_run_ids(ctx.tracking, ctx.experiment_id, run_id)
    record.trials = sorted(
        [
            {
                "trial": r.config["trial"],
                "status": "finished",
                **{k: r.metrics[k] for k in ("seed", "val_error", "val_nll", "best_epoch", "checkpoint")},
                "mlflow_run_id": run_ids.get(r.metrics["trial_id"]),
                "settings": searched_values(spec, generation, r.config),
            }
            for r in finished
        ]
        + [
            {"trial": r.config["trial"], "status": f"stopped early after epoch {r.metrics.get('epoch')}",
             "val_error": r.metrics.get("val_error"), "val_nll": r.metrics.get("val_nll"),
             "settings": searched_values(spec, generation, r.config)}
            for r in stopped
        ]
        + [
            {"trial": r.config.get("trial"), "status": "failed",
             "reason": r.metrics["failure"] if r.error is None else _failure_reason(r.error),
             "settings": searched_values(spec, generation, r.config)}
            for r in failed
        ],
        key=lambda t: (t["trial"] is None, t["trial"]),
    )
    if not finished:
        reasons = sorted({t["reason"] for t in record.trials if t["status"] == "failed"})
        record.message = f"no trial of {spec.search.trials} finished" + (
            f" ({'; '.join(reasons)})" if reasons else "; see the Ray logs and the MLflow trial runs"
        )
        tracking.end_run(ctx.tracking, run_id, "FAILED")
        say(label, record.message)
        return record

    best = min(finished, key=lambda r: (r.metrics[metric], r.config["trial"]))
    summary = best.metrics
    record.status = "finished"
    record.best_trial, record.best_trial_run_id = best.config["trial"], run_ids.get(summary["trial_id"])
    record.best_epoch, record.seed, record.checkpoint = summary["best_epoch"], summary["seed"], summary["checkpoint"]
    record.val_error, record.val_nll = summary["val_error"], summary["val_nll"]
    record.best_settings = searched_values(spec, generation, best.config)
    settings_text = f" with {record.best_settings}" if record.best_settings else ""
    say(label, f"best trial {record.best_trial} (epoch {record.best_epoch}){settings_text}: val_error "
               f"{100 * record.val_error:.2f}%")
    return record


def _prune_checkpoints(grid: tune.ResultGrid) -> None:
    """Delete every checkpoint of a finished Tune run but each finished trial's best (its summary names it):
    the trials are over, so no restart or restore can want the others."""
    for result in grid:
        keep = (result.metrics or {}).get("checkpoint")  # None for a failed or stopped trial
        for stored, _ in result.best_checkpoints or []:
            if keep is None or PurePosixPath(stored.path).name != PurePosixPath(keep).name:
                with_retries(f"deleting {stored.path}", lambda: stored.filesystem.delete_dir(stored.path))


def needs_evaluation(record: GenerationRecord) -> bool:
    return record.status == "finished" and record.model_uri is None


def evaluate_group(ctx: SweepContext, record: GenerationRecord) -> GenerationRecord:
    """A selected generation's test evaluation and MLflow model. It runs beside the next generation (which
    needs only the checkpoint), so it adds nothing to the chain's critical path."""
    model, _ = with_retries(f"loading {record.checkpoint}", lambda: checkpoint.load(record.checkpoint))
    # Eval mode for good: MLflow runs the model on its input example, which in train mode would move
    # BatchNorm's running statistics away from the checkpoint's.
    model.eval()
    task = make_task(ctx.spec.data, ctx.spec.train)
    # The test split is touched once per finished generation, for the selected model only.
    test = task.score(model, "test")
    record = dataclasses.replace(record, test_error=test.error, test_nll=test.nll, test_ece=test.ece)
    client = ctx.tracking.client()
    run_id = record.mlflow_run_id
    tracking.log_metrics(
        client,
        run_id,
        {"best_val_error": record.val_error, "best_val_nll": record.val_nll, "test_error": record.test_error,
         "test_nll": record.test_nll, **({"test_ece": record.test_ece} if record.test_ece is not None else {})},
    )
    client.set_tag(run_id, "banray.best_trial_run_id", record.best_trial_run_id)
    client.set_tag(run_id, "banray.checkpoint", record.checkpoint)
    for key, value in record.best_settings.items():
        client.log_param(run_id, f"best.{key}", value)
    record.model_uri = tracking.log_model(ctx.tracking, run_id, model, task.input_example())
    label = group_label(record.chain, record.generation, "control" if record.role == "control" else "main")
    say(
        label,
        f"test_error {100 * record.test_error:.2f}%, test NLL {record.test_nll:.3f}"
        + (f", test ECE {100 * record.test_ece:.2f}%" if record.test_ece is not None else "")
        + " (the selected model, evaluated once on the test split)",
    )
    return record


@dataclass
class ChainEnsembles:
    ensembles: list[EnsembleRecord]
    control_ensemble: EnsembleRecord | None  # Teacher + Teacher′, the baseline BANE is set against
    mlflow_run_id: str | None


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
        model, _ = with_retries(f"loading {record.checkpoint}", lambda: checkpoint.load(record.checkpoint))
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
    run_id = tracking.start_run(
        ctx.tracking,
        ctx.experiment_id,
        run_name=f"chain{chain}-ensembles",
        tags=tracking.banray_tags(sweep=ctx.spec.name, chain=chain, role="ensemble"),
        params={f"ens{e.k}.members": e.members for e in ensembles},
    )
    client = ctx.tracking.client()
    for e in ensembles:
        metrics = {f"ens{e.k}_test_error": e.test_error, f"ens{e.k}_test_nll": e.test_nll,
                   f"ens{e.k}_test_ece": e.test_ece}
        tracking.log_metrics(client, run_id, metrics)
        tracking.log_metrics(client, finished[e.members[-1]].mlflow_run_id, metrics)  # next to its last member
    if control_ensemble is not None:
        tracking.log_metrics(client, run_id, {"control_ensemble_test_error": control_ensemble.test_error,
                                              "control_ensemble_test_nll": control_ensemble.test_nll,
                                              "control_ensemble_test_ece": control_ensemble.test_ece})
    tracking.end_run(ctx.tracking, run_id)
    return ChainEnsembles(ensembles, control_ensemble, run_id)


def stop_reason(spec: SweepSpec, records: list[GenerationRecord]) -> str | None:
    """Why a chain should not go on after its last record, or None."""
    last = records[-1]
    if last.status != "finished":
        return f"no trial of generation {last.generation} finished"
    rule = spec.chain_stop
    if rule is None or len(records) < 2:
        return None
    metric = spec.search.metric
    previous, current = getattr(records[-2], metric), getattr(last, metric)
    if previous - current < rule.min_improvement:
        return (
            f"generation {last.generation}'s best {metric} {current:.4f} does not beat generation "
            f"{last.generation - 1}'s {previous:.4f} by chain_stop.min_improvement = {rule.min_improvement}"
        )
    return None


def tune_verbosity() -> int:
    return 1 if sys.stdout.isatty() else 0
