"""The driver's run of a sweep on a connected cluster: the sweep folder and MLflow experiment, the DAG of its
chains' groups with their evaluations and ensembles, and the report."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Callable

import ray
import yaml

from banray.records import ChainResult, GenerationRecord, SweepResult, arm_title
from banray.results import report, tracking
from banray.spec import SweepSpec
from banray.storage import SweepStorage
from banray.sweep.context import SweepContext, run_groups_here
from banray.sweep.dag import in_thread, run_dag
from banray.sweep.evaluations import evaluate_group, needs_evaluation, run_ensembles
from banray.sweep.generation_runs import start_generation_run
from banray.sweep.group import run_group
from banray.sweep.progress import tune_verbosity
from banray.sweep.runners import start_evaluations_runner
from banray.sweep.state import SweepState
from banray.trial.hosts import start_host, warm_hosts
from banray.trial.slots import WorkerSlots


def run_chains(
    spec: SweepSpec, storage: SweepStorage, capacity: int, echo: Callable[[str], None], previous: dict | None
) -> SweepResult:
    """Run the sweep's chains on `capacity` worker slots (`previous`: the state of the interrupted sweep it
    resumes)."""
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
    return name, WorkerSlots.options(name=name, get_if_exists=True).remote(capacity, start_host, hosts)


# What the evaluations' runner imports as it starts. MLflow's PyTorch flavour too: two evaluations' threads
# importing it at once for the first time could each find the other's half-imported modules.
EVALUATION_MODULES = ("banray.sweep.evaluations", "mlflow.pytorch")


def _start_evaluator(spec: SweepSpec) -> ray.actor.ActorHandle:
    """The runner of evaluations, niced: they run beside the next generations, which come first; a chain's
    can pile up behind them."""
    groups = spec.chains * (1 + len(spec.side_arms()))
    return start_evaluations_runner(groups * (spec.generations + 1), EVALUATION_MODULES, niceness=10)


def _prepare_and_run(spec: SweepSpec, storage: SweepStorage, capacity: int, echo: Callable[[str], None],
                     previous: dict | None, spec_text: str, evaluator: ray.actor.ActorHandle,
                     slots: tuple) -> SweepResult:
    ctx, state = _prepare(spec, storage, capacity, previous, spec_text, slots_actor=slots[0])
    for chain, records in [(c, r) for c, r in state.results.items() if r]:
        echo(f"[banray] chain {chain}: {len(records)} generation(s) finished before; they are not retrained")
    arms = "".join(f" + {arm_title(arm)}" for arm in spec.side_arms())
    echo(
        f"banray: sweep '{spec.name}': {spec.chains} chain(s) × (teacher + {spec.generations} generation(s){arms}) × "
        f"{spec.search.trials} trial(s); {capacity} trial(s) at a time; results in {storage.uri}"
    )
    dag, chains, busy_s = _schedule(ctx, state, slots[1], evaluator, echo)
    utilisation = busy_s / (capacity * dag.makespan_s)
    for chain in chains:  # each chain's run, and each side arm's, ends with the table of its generations
        tracking.finish_chain_run(ctx.tracking, ctx.experiment_id, spec.name, chain.generations, chain.stopped)
        for record in chain.arms.values():
            tracking.finish_chain_run(ctx.tracking, ctx.experiment_id, spec.name, [record], None)
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
    interrupted_arms = {chain: dict(running) for chain, running in state.arms_running.items()}
    run_groups_here(spec.train.checkpoint_every_s)

    def launch(chain: int, generation: int, teacher: GenerationRecord | None):
        group = interrupted.pop(chain, None)
        restore = group is not None and group["generation"] == generation
        run_id = (tracking.reopen_run(track, group["mlflow_run_id"]) if restore
                  else start_generation_run(ctx, chain, generation, teacher))
        state.started(chain, generation, run_id)
        return in_thread(run_group, ctx, chain, generation, teacher, run_id, restore)

    def launch_arm(chain: int, arm: str):
        run_id = interrupted_arms.get(chain, {}).pop(arm, None)
        restore = run_id is not None
        run_id = tracking.reopen_run(track, run_id) if restore else start_generation_run(ctx, chain, 0, None, arm)
        state.arm_started(chain, arm, run_id)
        return in_thread(run_group, ctx, chain, 0, None, run_id, restore, arm)

    dag = run_dag(
        spec.chains, spec.generations, launch=launch, stop_rule=lambda chain, records: stop_reason(spec, records),
        echo=echo, on_done=state.progressed, done=state.results, stopped=state.stopped,
        side_arms=tuple(spec.side_arms()), launch_arm=launch_arm, arms_done=state.arms,
        groups_at_once=ctx.groups_at_once,
        evaluate=lambda r: evaluator.call.remote(evaluate_group, ctx, r).future() if needs_evaluation(r) else None,
    )
    busy_s = ray.get(slots.busy_seconds.remote())
    ray.kill(slots)
    ensembles = ray.get(  # in the evaluations' runner, which has what they use imported
        [evaluator.call.remote(run_ensembles, ctx, c, dag.results[c], dag.arms[c]) for c in dag.results]
    )
    chains = [
        ChainResult(c, dag.results[c], found.ensembles, found.mlflow_run_id, dag.stopped.get(c),
                    arms=dag.arms[c], control_ensembles=found.control_ensembles)
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

