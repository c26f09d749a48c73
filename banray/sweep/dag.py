"""The sweep's DAG: chains × generations, generation k of a chain depending on generation k − 1, plus
(optionally) each chain's side arms (teacher′s, the equal-budget and label-smoothing models), which depend on
nothing.

Every ready group runs at once (the worker-slot pool, not this scheduler, bounds how many trials train);
a finished group unblocks its successor immediately, with no barrier between generations of
different chains. The scheduler is generic over what a group is and over how it waits for one (Futures by
default), so it can be tested on its own, without Ray.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from banray.records import arm_label

# What `launch`, `launch_arm` and `evaluate` return and `wait` waits for: a concurrent.futures.Future
# by default (`in_thread` makes one of a call, a Ray ObjectRef's `.future()` one of a remote call)
Handle = Any
# (chain, generation, predecessor's result or None) -> the group's handle
Launch = Callable[[int, int, Any], Handle]
# (chain, results so far) -> why the chain stops here, or None to go on
StopRule = Callable[[int, list[Any]], "str | None"]
# (handles still running) -> one of them that has finished, and its result
Wait = Callable[[list[Handle]], "tuple[Handle, Any]"]
OnDone = Callable[[dict[int, list[Any]], dict[int, str], dict[int, dict[str, Any]]], None]


@dataclass(frozen=True)
class GroupSpan:
    chain: int
    generation: int | str  # a generation, or a side arm's name
    start_s: float  # seconds since the sweep started
    end_s: float


@dataclass
class DagRun:
    results: dict[int, list[Any]]
    stopped: dict[int, str]  # chain → why it ended early
    arms: dict[int, dict[str, Any]]  # chain → its side arms' results, by arm
    spans: list[GroupSpan]
    makespan_s: float
    started_at: float  # wall-clock time (time.time()) of the spans' zero


def first_done(handles: list[Future]) -> tuple[Future, Any]:
    """The default wait step: the first of `handles` to finish, and its result (its error raised)."""
    done, _ = concurrent.futures.wait(handles, return_when=concurrent.futures.FIRST_COMPLETED)
    ready = next(iter(done))
    return ready, ready.result()


def in_thread(function: Callable[..., Any], *args: Any) -> Future:
    """Run `function(*args)` in a thread of its own; the Future of its result. A daemon thread: a driver
    stopped by Ctrl-C exits without waiting for the groups it was running."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(function(*args))
        except BaseException as exc:  # the caller's to see, from the Future
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def run_dag(
    chains: int,
    generations: int,
    launch: Launch,
    stop_rule: StopRule,
    echo: Callable[[str], None] = print,
    on_done: OnDone | None = None,
    done: dict[int, list[Any]] | None = None,
    stopped: dict[int, str] | None = None,
    side_arms: tuple[str, ...] = (),
    launch_arm: Callable[[int, str], Handle] | None = None,
    arms_done: dict[int, dict[str, Any]] | None = None,
    evaluate: Callable[[Any], Handle | None] | None = None,
    groups_at_once: int | None = None,
    wait: Wait = first_done,
    clock: Callable[[], float] = time.monotonic,
) -> DagRun:
    """Run generations 0 … `generations` of every chain, each group as soon as its predecessor is done.
    `on_done(results, stopped, arms)` runs after every finished group (e.g. to save the sweep state).
    A resumed sweep passes the groups already `done` per chain and the chains already `stopped`:
    each chain goes on after its last done group. `launch_arm(chain, arm)` starts each of a chain's
    `side_arms` (not yet in `arms_done`) once the chain's generation 0 is done, after its successor, and
    only while fewer than `groups_at_once` groups run (None: no bound): off the critical path, they take worker
    slots the chains leave idle, never ones their next generations wait for. `evaluate(result)`, if given,
    starts the follow-up work of a finished group (or returns None if there is none) beside its successor;
    the result it returns replaces the group's. `wait(handles)` blocks until one of the handles that
    `launch`, `launch_arm` and `evaluate` returned is done and returns it with its result (default:
    `first_done`, on Futures); `clock()` gives the spans' seconds."""
    dag = _Dag(
        chains, generations, launch, stop_rule, echo, tuple(side_arms) if launch_arm else (), launch_arm, evaluate,
        groups_at_once, clock,
        results={chain: list((done or {}).get(chain, [])) for chain in range(chains)},
        stopped=dict(stopped or {}),
        arms={chain: dict((arms_done or {}).get(chain, {})) for chain in range(chains)},
    )
    dag.start_ready()
    while dag.pending or dag.evaluating:
        dag.finished(*wait([*dag.pending, *dag.evaluating]))
        dag.start_due_arms()
        if on_done is not None:
            on_done(dag.results, dag.stopped, dag.arms)
    return DagRun(dag.results, dag.stopped, dag.arms, dag.spans, clock() - dag.origin, dag.started_at)


@dataclass
class _Dag:
    """run_dag's state and its steps: what runs, what is done, and what each finished handle starts next."""

    chains: int
    generations: int
    launch: Launch
    stop_rule: StopRule
    echo: Callable[[str], None]
    side_arms: tuple[str, ...]
    launch_arm: Callable[[int, str], Handle] | None
    evaluate: Callable[[Any], Handle | None] | None
    groups_at_once: int | None
    clock: Callable[[], float]
    results: dict[int, list[Any]]
    stopped: dict[int, str]
    arms: dict[int, dict[str, Any]]
    pending: dict[Handle, tuple[int, int | str, float]] = field(default_factory=dict)  # → (chain, generation or arm, start)
    evaluating: dict[Handle, tuple[int, int | str]] = field(default_factory=dict)  # → (chain, index or arm)
    spans: list[GroupSpan] = field(default_factory=list)
    arms_due: list[tuple[int, str]] = field(default_factory=list)  # side arms that may start once there is room
    origin: float = field(init=False)
    started_at: float = field(init=False)

    def __post_init__(self) -> None:
        self.origin, self.started_at = self.clock(), time.time()

    def start_ready(self) -> None:
        """Start every chain after its last done group (from generation 0 unless the sweep is resumed)."""
        for chain, records in self.results.items():
            for index, record in enumerate(records):  # groups a resumed sweep found selected but not evaluated
                self.follow_up(chain, index, record)
            for arm, result in self.arms[chain].items():
                self.follow_up(chain, arm, result)
            if chain not in self.stopped and len(records) <= self.generations:
                self.start(chain, len(records), records[-1] if records else None)
            if records:  # else due after generation 0
                self.arms_due += self.missing_arms(chain)
        self.start_due_arms()

    def missing_arms(self, chain: int) -> list[tuple[int, str]]:
        return [(chain, arm) for arm in self.side_arms if arm not in self.arms[chain]]

    def start_due_arms(self) -> None:
        while self.arms_due and (self.groups_at_once is None or len(self.pending) < self.groups_at_once):
            self.start_arm(*self.arms_due.pop(0))

    def start(self, chain: int, generation: int, previous: Any) -> None:
        self.echo(f"[banray] chain {chain} generation {generation}: started")
        self.pending[self.launch(chain, generation, previous)] = (chain, generation, self.clock() - self.origin)

    def start_arm(self, chain: int, arm: str) -> None:
        self.echo(f"[banray] {arm_label(chain, arm)}: started")
        self.pending[self.launch_arm(chain, arm)] = (chain, arm, self.clock() - self.origin)

    def follow_up(self, chain: int, where: int | str, result: Any) -> None:
        handle = self.evaluate(result) if self.evaluate is not None else None
        if handle is not None:
            self.evaluating[handle] = (chain, where)

    def finished(self, handle: Handle, result: Any) -> None:
        if handle in self.evaluating:
            self.evaluated(handle, result)
        else:
            self.group_done(handle, result)

    def evaluated(self, handle: Handle, result: Any) -> None:
        chain, where = self.evaluating.pop(handle)
        if isinstance(where, str):
            self.arms[chain][where] = result
        else:
            self.results[chain][where] = result

    def group_done(self, handle: Handle, result: Any) -> None:
        chain, generation, started = self.pending.pop(handle)
        self.spans.append(GroupSpan(chain, generation, started, self.clock() - self.origin))
        took = f"done after {self.spans[-1].end_s - started:.0f} s"
        if isinstance(generation, str):
            self.arms[chain][generation] = result
            self.echo(f"[banray] {arm_label(chain, generation)}: {took}")
            self.follow_up(chain, generation, result)
        else:
            self.generation_done(chain, generation, result, took)

    def generation_done(self, chain: int, generation: int, result: Any, took: str) -> None:
        self.results[chain].append(result)
        self.echo(f"[banray] chain {chain} generation {generation}: {took}")
        reason = self.stop_rule(chain, self.results[chain])
        if reason is not None:
            if generation < self.generations:
                self.stopped[chain] = reason
                self.echo(f"[banray] chain {chain} stopped after generation {generation}: {reason}")
        elif generation < self.generations:
            self.start(chain, generation + 1, result)
        if generation == 0:
            self.arms_due += self.missing_arms(chain)
        # After the successor: the critical path gets the first pick of the warm group processes.
        self.follow_up(chain, len(self.results[chain]) - 1, result)
