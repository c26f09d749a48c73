"""The driver: connect to Ray, lay out the sweep folder and MLflow experiment, run the chains, report.

The sweep state (`state.json` in the sweep folder) is rewritten whenever a group starts or ends: the
finished generations with everything the report needs, and the generation each chain is running with
its MLflow run. `run(..., resume=True)` reads it back: finished generations are not retrained, an
interrupted generation continues its Tune run (finished trials kept, unfinished ones from their last
checkpoints) under the same MLflow run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import ray
import torch
import yaml

from banray import lock, report, tracking
from banray.dag import in_thread, run_dag
from banray.data import DatasetMissing, SplitTooSmall
from banray.evaluation import evaluate_group, needs_evaluation, run_ensembles
from banray.group import (
    SweepContext, run_group, run_groups_here, start_generation_run, stop_reason, tune_verbosity,
)
from banray.models import build_model
from banray.records import ChainResult, GenerationRecord
from banray.runners import start_runner
from banray.spec import SpecError, SweepSpec, cut, shorten, with_storage
from banray.storage import STATE_FILE, SweepStorage, use_endpoint
from banray.tasks import make_task
from banray.slots import WorkerSlots, slot_capacity, warm_hosts

# Defaults for every Ray process of the sweep; a value already in the environment wins.
RAY_ENV_DEFAULTS = {
    # Train V2 polls its workers this often; the 2 s default adds up to 2 s to every trial.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # Tune's new console output prints a banner per Tune run even when silent; the legacy one obeys verbose=0.
    "RAY_AIR_NEW_OUTPUT": "0",
    # MLflow's INFO lines (database migrations, a link per ended run) would bury banray's progress lines.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}


class _TokenAuthNotice(logging.Filter):
    """Drops Ray's notice that token authentication is on, printed by every driver of a local cluster; its
    warnings that authentication is off or a token is wrong still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_TokenAuthNotice())


@dataclass
class SweepResult:
    report: dict[str, Any]
    sweep_dir: str  # a local path or an s3:// URI
    files: list[str]  # report files in the sweep folder


def open_storage(spec: SweepSpec) -> SweepStorage:
    """The sweep's folder, with its storage checked reachable; nothing is written."""
    try:
        storage = SweepStorage(spec.storage, spec.name)
        storage.check_reachable()
    except (OSError, ValueError) as exc:
        raise SpecError(f"storage: cannot reach {spec.storage.rstrip('/')}/{spec.name}: {exc}") from None
    if storage.remote and not (spec.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")):
        raise SpecError(
            f"tracking.uri: storage is {spec.storage}, so the MLflow store cannot live in the sweep folder; "
            "set tracking.uri or MLFLOW_TRACKING_URI to a tracking server"
        )
    return storage


def check_folder(storage: SweepStorage, overwrite: bool, resume: bool) -> None:
    """The folder must be empty or new, unless it is a sweep of this user's that --overwrite replaces or
    --resume continues; files that are not a banray sweep's are never replaced."""
    try:
        taken = storage.holds_anything()
        refusal = storage.why_not_a_sweep() if taken else None
    except OSError as exc:
        raise SpecError(f"storage: cannot use {storage.uri}: {exc}") from None
    if refusal is not None:
        raise SpecError(
            f"storage: {storage.uri} already exists and {refusal}; banray will not write into it or delete it: "
            "give the sweep another name, or pass --storage elsewhere"
        )
    if taken and not overwrite and not resume:
        raise SpecError(
            f"storage: {storage.uri} already holds a sweep named like this one; "
            "rename the sweep, pass --storage elsewhere, or pass --overwrite to replace it"
        )


def load_state(storage: SweepStorage, spec: SweepSpec) -> dict[str, Any]:
    """The state of the interrupted sweep to resume, checked against `spec`."""
    data = storage.read_bytes(STATE_FILE)
    if data is None:
        raise SpecError(f"--resume: {storage.uri} holds no sweep state ({STATE_FILE}); run without --resume")
    try:
        state = json.loads(data.decode())
        SweepState.restore(spec, storage, state)
        hash_of_state = state["spec_hash"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SpecError(
            f"--resume: {storage.child(STATE_FILE)} is not a readable sweep state ({type(exc).__name__}: "
            f"{cut(str(exc), 80)}); it cannot be resumed: start it again with --overwrite"
        ) from None
    if hash_of_state != spec.spec_hash():
        raise SpecError(
            f"--resume: the sweep in {storage.uri} ran a different spec (hash {cut(str(hash_of_state), 20)}, this one "
            f"{spec.spec_hash()}); resume it with the same spec, or rename the sweep to start a new one"
        )
    return state


def finished_report(storage: SweepStorage) -> dict[str, Any]:
    """The report of a sweep whose state says it finished."""
    data = storage.read_bytes("report.json")
    try:
        report_data = json.loads(data.decode()) if data is not None else {}
        if not isinstance(report_data, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise SpecError(
            f"--resume: the sweep in {storage.uri} has finished, but its report.json is not readable "
            f"({cut(str(exc), 80)}); run it again with --overwrite"
        ) from None
    return report_data


# What a model builder may raise for kwargs it cannot build (models.ModelTooLarge is a ValueError).
BUILD_ERRORS = (TypeError, ValueError, RuntimeError, AssertionError, OverflowError, MemoryError)


def preflight(spec: SweepSpec) -> None:
    """Checks that need the data and the model code: the dataset's files are in place, its split fits, and
    every model can be built for it. Raises SpecError, before anything is started or written."""
    try:
        task = make_task(spec.data, spec.train.at_midpoints())
    except (DatasetMissing, SplitTooSmall) as exc:
        raise SpecError(str(exc)) from None
    top_k = spec.distill.cache_top_k
    if top_k is not None and top_k >= task.num_classes:
        raise SpecError(
            f"distill.cache_top_k: {top_k} is not allowed: {spec.data.dataset} has {task.num_classes} classes; "
            "give fewer, or leave it unset to store every logit"
        )
    for key, model in (("model", spec.model), ("student", spec.student)):
        if model is not None:
            _check_model(key, model, spec.data.dataset, task)


def _check_model(key: str, model, dataset: str, task) -> None:
    kwargs = shorten(model.kwargs, 100)
    with warnings.catch_warnings():  # torch's warnings about odd layers would print before the one error line
        warnings.simplefilter("ignore")
        try:
            built = build_model(model.arch, num_classes=task.num_classes, input_shape=task.input_shape, **model.kwargs)
        except BUILD_ERRORS as exc:
            text = str(getattr(exc, "reason", exc)).strip()  # models' own errors carry the reason alone
            reason = cut(text.splitlines()[0] if text else type(exc).__name__)
            raise SpecError(f"{key}.kwargs: {model.arch} cannot be built with {kwargs}: {reason}") from None
        example = task.input_example()
        if example is None:  # language models take (tokens, state); their shapes are checked by the spec
            return
        try:  # a model can build and still not take the input (e.g. too narrow for the image)
            with torch.no_grad():
                built.eval()(torch.from_numpy(example))
        except (RuntimeError, ValueError) as exc:
            raise SpecError(
                f"{key}: {model.arch} with {kwargs} cannot take {dataset}'s input of shape "
                f"{tuple(task.input_shape)}: {cut(str(exc).strip().splitlines()[0])}"
            ) from None


def connect(address: str | None, env_vars: dict[str, str], dashboard: bool) -> bool:
    """Connect to (or start) Ray; returns whether this call started the connection. `env_vars` reach
    every Ray process of the sweep; secrets never go there (a cluster's nodes bring their own).
    `dashboard`: whether a local cluster started here runs Ray's dashboard (a running cluster has its own)."""
    if ray.is_initialized():
        return False
    env = {**{k: os.environ.get(k, v) for k, v in RAY_ENV_DEFAULTS.items()}, **env_vars}
    cluster = address or os.environ.get("RAY_ADDRESS")
    if cluster and cluster != "auto" and "://" not in cluster:
        # Ray's own State API calls in workers (Train's placement-group cleaner) need to know the cluster
        # when a machine runs more than one Ray instance.
        env["RAY_ADDRESS"] = cluster
    os.environ.update(env)
    # Under `ray job submit` the job's runtime_env may set the same variables: merge rather than fail.
    os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
    # A local cluster that ray.init starts inherits this environment. A runtime env would set the variables
    # too, but then every worker process starts through Ray's setup_worker (0.5 s of CPU each, a dozen per
    # quickstart), so it is only for clusters that run elsewhere.
    runtime_env = {"env_vars": env} if cluster else None
    local = {} if cluster else {"include_dashboard": dashboard}
    # Ray's own INFO lines (one per reported epoch and checkpoint) would bury banray's progress lines.
    ray.init(address=address, runtime_env=runtime_env, logging_config=ray.LoggingConfig(log_level="WARNING"), **local)
    return True


def needs_dashboard(spec: SweepSpec, asked: bool | None) -> bool:
    """Whether a local cluster for `spec` starts Ray's dashboard: when asked, else only when trials run on
    TorchTrainer (Train's controller calls the State API, which the dashboard serves). Its processes cost
    about 4 s of CPU of the quickstart's 57 on 2 cores, and trials on warm hosts never call it."""
    return asked if asked is not None else spec.resources.engine() == "train"


def run(
    spec: SweepSpec,
    *,
    address: str | None = None,
    storage: str | None = None,
    overwrite: bool = False,
    resume: bool | Literal["if-started"] = False,
    echo: Callable[[str], None] = print,
    dashboard: bool | None = None,
) -> SweepResult:
    """Run the sweep. `resume`: continue the interrupted sweep in the folder; "if-started": continue it if
    the folder holds one, else start (for job entrypoints that a scheduler may run again). `dashboard`:
    whether a local cluster started for it runs Ray's dashboard (None: only if trials need it)."""
    if storage is not None:
        spec = with_storage(spec, storage)  # so spec.yaml records where it really ran
    endpoint_env = use_endpoint(spec.storage_endpoint)
    sweep_storage = open_storage(spec)
    preflight(spec)
    try:
        with lock.hold(sweep_storage):
            if resume == "if-started":
                resume = sweep_storage.exists(STATE_FILE)
            check_folder(sweep_storage, overwrite, resume)
            previous = load_state(sweep_storage, spec) if resume else None
            if previous is not None and previous["finished"]:
                found = finished_report(sweep_storage)
                echo(f"banray: sweep '{spec.name}' in {sweep_storage.uri} has already finished; nothing to resume")
                return SweepResult(found, sweep_storage.uri, [])
            started = connect(address, endpoint_env, needs_dashboard(spec, dashboard))
            return _run_on_ray(spec, sweep_storage, started, echo, previous)
    except lock.SweepLocked as exc:
        raise SpecError(str(exc)) from None


def _run_on_ray(
    spec: SweepSpec, storage: SweepStorage, started: bool, echo: Callable[[str], None], previous: dict | None
) -> SweepResult:
    """Run the sweep on the connected cluster; shut the connection down after if `started`."""
    try:
        capacity = slot_capacity(spec.resources, ray.cluster_resources())
        if capacity < 1:
            raise SpecError(
                f"resources: a trial needs {spec.resources.workers_per_trial} worker(s) × "
                f"{spec.resources.cpus_per_worker} CPU / {spec.resources.gpus_per_worker} GPU, but the cluster has "
                f"{ray.cluster_resources().get('CPU', 0):g} CPU / {ray.cluster_resources().get('GPU', 0):g} GPU"
            )
        return _run_dag(spec, storage, capacity, echo, previous)
    finally:
        if started:
            ray.shutdown()


@dataclass
class SweepState:
    """What `state.json` holds, kept current by the driver: per chain, its finished generations (whole
    records), why it stopped, the generation it is running with that generation's MLflow run, and its
    control arm (finished record, or the MLflow run of the running one)."""

    spec: SweepSpec
    storage: SweepStorage
    results: dict[int, list[GenerationRecord]] = dataclasses.field(default_factory=dict)
    stopped: dict[int, str] = dataclasses.field(default_factory=dict)
    running: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    controls: dict[int, GenerationRecord] = dataclasses.field(default_factory=dict)
    controls_running: dict[int, str] = dataclasses.field(default_factory=dict)  # chain → MLflow run id
    # For `banray status`: when each running control arm started, the finished groups' wall-clock spans
    # (chain, generation or "control", started_at, ended_at) and how many groups run at once.
    control_since: dict[int, float] = dataclasses.field(default_factory=dict)
    spans: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    groups_at_once: int | None = None

    @classmethod
    def restore(cls, spec: SweepSpec, storage: SweepStorage, saved: dict[str, Any] | None) -> SweepState:
        state = cls(spec, storage, results={chain: [] for chain in range(spec.chains)})
        state.spans = list((saved or {}).get("groups") or [])  # absent from states written before it was kept
        for key, value in (saved or {"chains": {}})["chains"].items():
            chain = int(key)
            state.results[chain] = [GenerationRecord(**r) for r in value["generations"]]
            if value["stopped"]:
                state.stopped[chain] = value["stopped"]
            if value["running"]:
                state.running[chain] = value["running"]
            if value["control"]:
                state.controls[chain] = GenerationRecord(**value["control"])
            if value["control_running"]:
                state.controls_running[chain] = value["control_running"]
        return state

    def started(self, chain: int, generation: int, run_id: str) -> None:
        previous = self.running.get(chain)
        if previous is not None and previous["generation"] != generation:  # it ended: its successor starts
            self._ended(chain, previous["generation"], previous.get("started_at"))
        self.running[chain] = {"generation": generation, "mlflow_run_id": run_id, "started_at": time.time()}
        self.save()

    def _ended(self, chain: int, generation: int | str, started_at: float | None) -> None:
        self.spans.append({"chain": chain, "generation": generation, "started_at": started_at, "ended_at": time.time()})

    def control_started(self, chain: int, run_id: str) -> None:
        self.controls_running[chain] = run_id
        self.control_since[chain] = time.time()
        self.save()

    def progressed(self, results: dict[int, list], stopped: dict[int, str], controls: dict[int, Any]) -> None:
        self.results, self.stopped, self.controls = results, stopped, controls
        for chain in [c for c, group in self.running.items() if len(results.get(c, [])) > group["generation"]]:
            group = self.running.pop(chain)
            self._ended(chain, group["generation"], group.get("started_at"))
        for chain in [c for c in self.controls_running if c in controls]:
            del self.controls_running[chain]
            self._ended(chain, "control", self.control_since.pop(chain, None))
        self.save()

    def save(self, finished: bool = False) -> None:
        self.storage.write_json(
            STATE_FILE,
            {
                "sweep": self.spec.name,
                "spec_hash": self.spec.spec_hash(),
                "finished": finished,
                "groups_at_once": self.groups_at_once,
                "groups": self.spans,
                "chains": {
                    str(chain): {
                        "stopped": self.stopped.get(chain),
                        "running": self.running.get(chain),
                        "generations": [dataclasses.asdict(r) for r in records],
                        "control": dataclasses.asdict(self.controls[chain]) if chain in self.controls else None,
                        "control_running": self.controls_running.get(chain),
                        "control_started_at": self.control_since.get(chain),
                    }
                    for chain, records in self.results.items()
                },
            },
        )


def _run_dag(
    spec: SweepSpec, storage: SweepStorage, capacity: int, echo: Callable[[str], None], previous: dict | None
) -> SweepResult:
    spec_text = yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False)
    # The slot pool's warm hosts and the evaluations' runner start while the driver prepares the folder and the
    # MLflow store.
    slots = _start_slots(spec, storage, capacity)
    evaluator = _start_evaluator(spec)
    try:
        return _prepare_and_run(spec, storage, capacity, echo, previous, spec_text, evaluator, slots)
    finally:  # on a long-lived cluster, the runner would otherwise live as long as the driver
        ray.kill(evaluator)


def _start_slots(spec: SweepSpec, storage: SweepStorage, capacity: int) -> tuple[str, ray.actor.ActorHandle]:
    """The sweep's worker-slot pool, its warm hosts starting (the driver holds its handle: an actor nobody
    holds is gone). Named after the sweep folder: trials of an interrupted group, restored by a resumed
    sweep, find it again."""
    name = f"banray-slots-{hashlib.sha256(storage.uri.encode()).hexdigest()[:12]}"
    # Started here rather than by the pool, whose own process would start first: the hosts are the first
    # group's critical path.
    hosts = warm_hosts(spec.resources, capacity) if spec.resources.on_host() else {}
    return name, WorkerSlots.options(name=name, get_if_exists=True).remote(capacity, hosts)


def _start_evaluator(spec: SweepSpec) -> ray.actor.ActorHandle:
    """The runner of evaluations, niced: they run beside the next generations, which come first; a chain's
    can pile up behind them."""
    groups = spec.chains * (1 + int(spec.control))
    # MLflow's PyTorch flavour too: two evaluations' threads importing it at once for the first time could
    # each find the other's half-imported modules.
    return start_runner(groups * (spec.generations + 1), ("banray.evaluation", "mlflow.pytorch"), niceness=10)


def _prepare_and_run(spec: SweepSpec, storage: SweepStorage, capacity: int, echo: Callable[[str], None],
                     previous: dict | None, spec_text: str, evaluator: ray.actor.ActorHandle,
                     slots: tuple) -> SweepResult:
    ctx, state = _prepare(spec, storage, capacity, previous, spec_text, slots_actor=slots[0])
    for chain, records in [(c, r) for c, r in state.results.items() if r]:
        echo(f"[banray] chain {chain}: {len(records)} generation(s) finished before; they are not retrained")
    control = " + control teacher′" if spec.control else ""
    echo(
        f"banray: sweep '{spec.name}': {spec.chains} chain(s) × (teacher + {spec.generations} generation(s){control}) × "
        f"{spec.search.trials} trial(s); {capacity} trial(s) at a time; results in {storage.uri}"
    )
    dag, chains, busy_s = _schedule(ctx, state, slots[1], evaluator, echo)
    utilisation = busy_s / (capacity * dag.makespan_s)
    for chain in chains:  # each chain's run, and its control arm's, ends with the table of its generations
        for records, stopped in ((chain.generations, chain.stopped), ([chain.control] if chain.control else [], None)):
            tracking.finish_chain_run(ctx.tracking, ctx.experiment_id, spec.name, records, stopped)
    aliases = tracking.register_generations(
        ctx.tracking, spec.name, [r for chain in chains for r in chain.generations], spec.search.metric,
        ctx.experiment_id,
    )
    result = report.build(
        spec, chains, sweep_dir=storage.uri, tracking_uri=ctx.tracking.uri, experiment_id=ctx.experiment_id,
        elapsed_s=dag.makespan_s, utilisation=utilisation, spans=dag.spans, started_at=dag.started_at,
        registry={"name": spec.name, "aliases": aliases},
    )
    files = _write_report(ctx, storage, result, spec_text)
    state.save(finished=True)
    echo("")
    echo(
        f"Makespan {dag.makespan_s:.0f} s; worker-slot utilisation {100 * utilisation:.0f}% "
        f"({busy_s:.0f} busy slot-seconds of {capacity} slot(s) × {dag.makespan_s:.0f} s)"
    )
    _print_result(ctx, result, files, aliases, echo)
    return SweepResult(result, storage.uri, files)


def _prepare(spec: SweepSpec, storage: SweepStorage, capacity: int, previous: dict | None,
             spec_text: str, slots_actor: str) -> tuple[SweepContext, SweepState]:
    """The sweep folder (a new sweep's, written only now that the checks have passed), its state and the
    MLflow experiment."""
    track = tracking.resolve(spec.tracking.uri, spec.tracking.experiment or spec.name, storage.local_dir())
    if track.artifact_location is None:  # a tracking server: reach it before writing anything
        tracking.ensure_experiment(track)
    if previous is None:
        storage.clear()  # an earlier sweep of this user's, checked by check_folder under the lock
        storage.create(spec.name)
        storage.write_text("spec.yaml", spec_text)
    state = SweepState.restore(spec, storage, previous)
    experiment_id = tracking.ensure_experiment(track)
    tracking.describe_experiment(track, experiment_id, spec.name)
    ctx = SweepContext(spec=spec, sweep_dir=storage.uri, tracking=track, experiment_id=experiment_id,
                       slots_actor=slots_actor, capacity=capacity, tune_verbose=tune_verbosity())
    state.groups_at_once = ctx.groups_at_once
    return ctx, state


def _schedule(ctx: SweepContext, state: SweepState, slots: ray.actor.ActorHandle, evaluator: ray.actor.ActorHandle,
              echo: Callable[[str], None]):
    """Run the DAG of groups, each in a thread of this process, their evaluations in the evaluations' runner,
    then each chain's ensembles: (the DAG's run, the chains' results, busy slot-seconds)."""
    spec, track = ctx.spec, ctx.tracking
    interrupted = dict(state.running)  # groups the interrupted driver was running
    interrupted_controls = dict(state.controls_running)
    run_groups_here(spec.train.checkpoint_every_s)

    def launch(chain: int, generation: int, teacher: GenerationRecord | None):
        group = interrupted.pop(chain, None)
        restore = group is not None and group["generation"] == generation
        run_id = (tracking.reopen_run(track, group["mlflow_run_id"]) if restore
                  else start_generation_run(ctx, chain, generation, teacher))
        state.started(chain, generation, run_id)
        return in_thread(run_group, ctx, chain, generation, teacher, run_id, restore)

    def launch_control(chain: int):
        run_id = interrupted_controls.pop(chain, None)
        restore = run_id is not None
        run_id = tracking.reopen_run(track, run_id) if restore else start_generation_run(ctx, chain, 0, None, "control")
        state.control_started(chain, run_id)
        return in_thread(run_group, ctx, chain, 0, None, run_id, restore, "control")

    dag = run_dag(
        spec.chains, spec.generations, launch=launch, stop_rule=lambda chain, records: stop_reason(spec, records),
        echo=echo, on_done=state.progressed, done=state.results, stopped=state.stopped,
        launch_control=launch_control if spec.control else None, controls_done=state.controls,
        groups_at_once=ctx.groups_at_once,
        evaluate=lambda r: evaluator.call.remote(evaluate_group, ctx, r).future() if needs_evaluation(r) else None,
    )
    busy_s = ray.get(slots.busy_seconds.remote())
    ray.kill(slots)
    ensembles = ray.get(  # in the evaluations' runner, which has what they use imported
        [evaluator.call.remote(run_ensembles, ctx, c, dag.results[c], dag.controls.get(c)) for c in dag.results]
    )
    chains = [
        ChainResult(c, dag.results[c], found.ensembles, found.mlflow_run_id, dag.stopped.get(c),
                    control=dag.controls.get(c), control_ensemble=found.control_ensemble)
        for c, found in zip(dag.results, ensembles)
    ]
    return dag, chains, busy_s


def _write_report(ctx: SweepContext, storage: SweepStorage, result: dict, spec_text: str) -> list:
    """report.json, .md and .png into the sweep folder, and with the spec into MLflow's summary run."""
    track = ctx.tracking
    with tempfile.TemporaryDirectory() as folder:
        local_files = report.write(result, Path(folder))
        (Path(folder) / "spec.yaml").write_text(spec_text)
        files = [storage.write_bytes(f.name, f.read_bytes()) for f in local_files]
        tags = tracking.banray_tags(sweep=ctx.spec.name, role="summary", level="sweep", arm="main", column="all")
        note = tracking.summary_note(ctx.spec.name, report.table(result))
        summary_run = tracking.start_run(track, ctx.experiment_id, "summary", tags={**tags, tracking.NOTE: note})
        tracking.log_artifacts(track, summary_run, [Path(folder) / "spec.yaml", *local_files])
        # Every paired statistic as a table (the UI shows it as one); the run's metrics are the headline numbers.
        track.client().log_table(summary_run, tracking.paired_table(result), "paired.json")
        tracking.log_steps(track.client(), summary_run, report.summary_metrics(result))
        tracking.end_run(track, summary_run)
    return files


def _print_result(ctx: SweepContext, result: dict, files: list, aliases: dict, echo: Callable[[str], None]) -> None:
    """Where everything is, then the report's caption and table: the table is the last thing a sweep prints."""
    track, experiment_id, name = ctx.tracking, ctx.experiment_id, ctx.spec.name
    echo(f"Report: {', '.join(str(f) for f in files)}")
    echo(f"MLflow: experiment '{track.experiment}' (id {experiment_id}) at {track.uri}")
    if aliases:
        echo(
            f"Registered model '{name}': @best = version {aliases['best']}; "
            + ", ".join(f"@{a} = {v}" for a, v in aliases.items() if a.startswith("gen-"))
            + f"  (move @best with: banray promote {name} --generation K)"
        )
    if track.uri.startswith(("http://", "https://")):
        echo(f"Open the MLflow UI: {tracking.runs_link(track.uri, experiment_id, chart=True)}")
    else:
        echo(f"Open the MLflow UI: banray ui {ctx.sweep_dir}  "
             f"(then {tracking.runs_link('http://127.0.0.1:5000', experiment_id, chart=True)})")
    echo("")
    echo(report.caption(result))
    echo(report.table(result))
