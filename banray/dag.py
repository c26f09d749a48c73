"""The sweep's DAG: chains × generations, generation k of a chain depending on generation k − 1, plus
(optionally) each chain's control arm, which depends on nothing.

Every ready group runs at once (the worker-slot pool, not this scheduler, bounds how many trials train);
a finished group unblocks its successor immediately, with no barrier between generations of
different chains. The scheduler is generic over what a group is, so it can be tested on its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import ray

# (chain, generation, predecessor's result or None) -> the group's ObjectRef
Launch = Callable[[int, int, Any], "ray.ObjectRef"]
# (chain, results so far) -> why the chain stops here, or None to go on
StopRule = Callable[[int, list[Any]], "str | None"]


CONTROL = "control"


@dataclass(frozen=True)
class GroupSpan:
    chain: int
    generation: int | str  # a generation, or CONTROL
    start_s: float  # seconds since the sweep started
    end_s: float


@dataclass
class DagRun:
    results: dict[int, list[Any]]
    stopped: dict[int, str]  # chain → why it ended early
    controls: dict[int, Any]  # chain → its control arm's result
    spans: list[GroupSpan]
    makespan_s: float
    started_at: float  # wall-clock time (time.time()) of the spans' zero


def run_dag(
    chains: int,
    generations: int,
    launch: Launch,
    stop_rule: StopRule,
    echo: Callable[[str], None] = print,
    on_done: Callable[[dict[int, list[Any]], dict[int, str], dict[int, Any]], None] | None = None,
    done: dict[int, list[Any]] | None = None,
    stopped: dict[int, str] | None = None,
    launch_control: Callable[[int], "ray.ObjectRef"] | None = None,
    controls_done: dict[int, Any] | None = None,
    evaluate: Callable[[Any], "ray.ObjectRef | None"] | None = None,
    groups_at_once: int | None = None,
) -> DagRun:
    """Run generations 0 … `generations` of every chain, each group as soon as its predecessor is done.
    `on_done(results, stopped, controls)` runs after every finished group (e.g. to save the sweep state).
    A resumed sweep passes the groups already `done` per chain and the chains already `stopped`:
    each chain goes on after its last done group. `launch_control(chain)`, if given, starts each chain's
    control arm (not yet in `controls_done`) once the chain's generation 0 is done, after its successor, and
    only while fewer than `groups_at_once` groups run (None: no bound): off the critical path, it takes worker
    slots the chains leave idle, never ones their next generations wait for. `evaluate(result)`, if given, starts the follow-up
    work of a finished group (or returns None if there is none) beside its successor; the result it
    returns replaces the group's."""
    origin, started_at = time.monotonic(), time.time()
    pending: dict[ray.ObjectRef, tuple[int, int | str, float]] = {}
    evaluating: dict[ray.ObjectRef, tuple[int, int | str]] = {}  # → (chain, index in results or CONTROL)
    results: dict[int, list[Any]] = {chain: list((done or {}).get(chain, [])) for chain in range(chains)}
    stopped = dict(stopped or {})
    controls = dict(controls_done or {})
    spans: list[GroupSpan] = []
    controls_due: list[int] = []  # chains whose control arm may start once there is room

    def start_due_controls() -> None:
        while controls_due and (groups_at_once is None or len(pending) < groups_at_once):
            start_control(controls_due.pop(0))

    def start(chain: int, generation: int, previous: Any) -> None:
        echo(f"[banray] chain {chain} generation {generation}: started")
        pending[launch(chain, generation, previous)] = (chain, generation, time.monotonic() - origin)

    def start_control(chain: int) -> None:
        if launch_control is not None and chain not in controls:
            echo(f"[banray] chain {chain} control (teacher′): started")
            pending[launch_control(chain)] = (chain, CONTROL, time.monotonic() - origin)

    def follow_up(chain: int, where: int | str, result: Any) -> None:
        ref = evaluate(result) if evaluate is not None else None
        if ref is not None:
            evaluating[ref] = (chain, where)

    for chain, records in results.items():
        for index, record in enumerate(records):  # groups a resumed sweep found selected but not evaluated
            follow_up(chain, index, record)
        if chain in controls:
            follow_up(chain, CONTROL, controls[chain])
        if chain not in stopped and len(records) <= generations:
            start(chain, len(records), records[-1] if records else None)
        if records and launch_control is not None and chain not in controls:  # else due after generation 0
            controls_due.append(chain)
    start_due_controls()
    while pending or evaluating:
        (ready,), _ = ray.wait([*pending, *evaluating], num_returns=1)
        result = ray.get(ready)
        if ready in evaluating:
            chain, where = evaluating.pop(ready)
            if where == CONTROL:
                controls[chain] = result
            else:
                results[chain][where] = result
        else:
            chain, generation, started = pending.pop(ready)
            spans.append(GroupSpan(chain, generation, started, time.monotonic() - origin))
            took = f"done after {spans[-1].end_s - started:.0f} s"
            if generation == CONTROL:
                controls[chain] = result
                echo(f"[banray] chain {chain} control (teacher′): {took}")
                follow_up(chain, CONTROL, result)
            else:
                results[chain].append(result)
                echo(f"[banray] chain {chain} generation {generation}: {took}")
                reason = stop_rule(chain, results[chain])
                if reason is not None:
                    if generation < generations:
                        stopped[chain] = reason
                        echo(f"[banray] chain {chain} stopped after generation {generation}: {reason}")
                elif generation < generations:
                    start(chain, generation + 1, result)
                if generation == 0 and launch_control is not None and chain not in controls:
                    controls_due.append(chain)
                # After the successor: the critical path gets the first pick of the warm group processes.
                follow_up(chain, len(results[chain]) - 1, result)
        start_due_controls()
        if on_done is not None:
            on_done(results, stopped, controls)
    return DagRun(results, stopped, controls, spans, time.monotonic() - origin, started_at)
