"""Warm trial processes. A Tune trial's process lives as long as its Tune run, one group: a fresh one per
group imports torch and the worker loop, loads the optimizers' compiler front end (torch._dynamo, on the
first optimizer) and reads the data again, seconds of CPU before its first epoch, paid by every group of
every chain. A `TrialHost` keeps all of that for the whole sweep: one per worker slot on each node, handed
out with the slot (banray.trial.slots.WorkerSlots). The Tune trial runs `drive_host`: it starts the trial on its
host and reports each epoch the host hands over, checkpoint included, so Tune still restores, restarts,
schedules and tracks the trial as its own. Trials that hold a GPU train in their Tune trial's process: a
host holds no resources of its own, and so would see no GPU.

The driving side imports neither torch nor banray's data and models (its process starts once per group);
the host side imports them in the host.
"""

from __future__ import annotations

import collections
import os
import queue
import shutil
import tempfile
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import ray
import ray.train
import ray.tune as tune
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from banray.records import TrialSummary
from banray.storage import SWEEP_FILES, checkpoint_uri
from banray.trial import wire
from banray.trial.slots import holding_a_slot, slot_capacity, slot_priority
from banray.trial.tune_report import continued_from, report_to_tune

if TYPE_CHECKING:
    import torch

    from banray.spec import ResourcesSpec


class _Cancelled(Exception):
    """The trial a host was training for is gone: a new one was started on the host."""


class HostSession:
    """The worker loop's session on a host: its reports go to the Tune trial that drives the host, one at a
    time. A report with a checkpoint hands the checkpoint's files over and returns at once, with a Future of
    the URI the trial stores them at: the training thread waits on the trial's round trip (storing, and
    Tune's controller taking the result) only where it needs that URI. The files are deleted once stored."""

    rank, world_size, storage = 0, 1, SWEEP_FILES
    WAIT_S = 0.2  # how often a waiting hand-over checks whether its trial is gone

    def __init__(self, restored: ray.train.Checkpoint | None):
        self.reports: queue.Queue = queue.Queue(maxsize=1)  # the loop trains one epoch ahead of its trial
        self.cancelled = threading.Event()
        self._restored = None if restored is None else checkpoint_uri(restored)
        self.node_id = ray.get_runtime_context().get_node_id()
        self._unstored: collections.deque[tuple[str, Future]] = collections.deque()  # oldest first

    def device(self) -> torch.device:
        import torch

        return torch.device("cpu")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def restored(self) -> str | None:
        return self._restored

    def report(self, metrics: dict, directory: str | None) -> Future | None:
        if directory is None:
            self.hand_over((metrics, None))
            return None
        handed = tempfile.mkdtemp(prefix="banray-checkpoint-")
        for name in os.listdir(directory):  # the loop's folder is its own to delete; these files are the trial's
            os.rename(os.path.join(directory, name), os.path.join(handed, name))
        uri: Future = Future()
        self._unstored.append((handed, uri))
        try:
            self.hand_over((metrics, handed))
        except _Cancelled:
            self.cancel()  # cancelled before the trial took it: nobody will store it
            raise
        return uri

    def stored(self, uri: str | None) -> None:
        """The trial has stored the oldest checkpoint handed over, at `uri`."""
        future = self._release_oldest()
        if future is not None:  # None: cancelled meanwhile
            future.set_result(uri)

    def cancel(self) -> None:
        """Stop the loop at its next report or wait: its trial is gone."""
        self.cancelled.set()
        while (future := self._release_oldest()) is not None:
            future.set_exception(_Cancelled())

    def _release_oldest(self) -> Future | None:
        try:
            folder, future = self._unstored.popleft()
        except IndexError:
            return None
        shutil.rmtree(folder, ignore_errors=True)
        return future

    def hand_over(self, item: Any) -> None:
        self._wait(lambda timeout: self.reports.put(item, timeout=timeout))

    def next_report(self) -> Any:
        return self._wait(self.reports.get)

    def _wait(self, call):
        while True:
            if self.cancelled.is_set():
                raise _Cancelled()
            try:
                return call(timeout=self.WAIT_S)
            except (queue.Empty, queue.Full):
                pass


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=4)
class TrialHost:
    """A warm process that trains one trial at a time, in a thread, for the Tune trial that started it.

    It reserves nothing: the Tune trial that drives it holds the trial's CPUs, on the same node. Ray restarts
    a host that dies; the trial it was training fails with it and Tune restarts that trial from its last
    checkpoint, on the restarted host."""

    def __init__(self):
        import torch

        import banray.training.loop  # noqa: F401  (imported once per host, not once per trial)

        self.session: HostSession | None = None
        self.thread: threading.Thread | None = None
        # The first optimizer imports torch's compiler front end (seconds): once, before any trial waits.
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)

    def start(self, config: dict[str, Any], restored: ray.train.Checkpoint | None) -> None:
        """Train the trial of this Tune `config` from `restored` (or from scratch), after ending what a gone
        trial left running."""
        from banray.trial.trainable import read_trial  # with the spec's types, torch: the host has it already

        trial = read_trial(config)
        self.cancel()
        if self.thread is not None:
            self.thread.join()
        self.session = session = HostSession(restored)
        self.thread = threading.Thread(target=self._train, args=(trial.settings, session,
                                                                 trial.resources.cpus_per_worker), daemon=True)
        self.thread.start()

    @staticmethod
    def _train(settings, session: HostSession, cpus: float) -> None:
        from banray.training.loop import train_loop

        try:
            outcome: Any = train_loop(settings, session, cpus)
        except _Cancelled:
            return
        except Exception as exc:  # the trial's error, raised again in the trial by next_report
            outcome = exc
        try:
            session.hand_over(outcome)
        except _Cancelled:
            pass

    def cancel(self) -> None:
        """Stop training at the next report: its trial is gone (ASHA stopped it, or it died)."""
        if self.session is not None:
            self.session.cancel()

    def next_report(self) -> Any:
        """The next epoch's (metrics, checkpoint folder or None), or the trial's summary; raises its error."""
        item = self.session.next_report()
        if isinstance(item, Exception):
            raise item
        return item

    def stored(self, uri: str | None) -> None:
        """Where the trial stored the oldest checkpoint it was handed and has not yet said."""
        self.session.stored(uri)


def drive_host(config: dict[str, Any]) -> None:
    """The Tune trainable of a trial that trains on a host. It reads the ticket of its Tune config
    (banray.trial.wire); the host reads the trial's settings."""
    ticket = wire.ticket(config)
    with holding_a_slot(ticket.slots_actor, slot_priority(ticket.arm, ticket.generation)) as slots:
        host = ray.get(slots.host.remote(ray.get_runtime_context().get_actor_id(),
                                         ray.get_runtime_context().get_node_id()))
        summary = _train_on(host, config)
    tune.report(summary.to_report(ticket.metric))


def _train_on(host: ray.actor.ActorHandle, config: dict[str, Any]) -> TrialSummary:
    ray.get(host.start.remote(config, continued_from(config)))
    while True:
        try:
            item = ray.get(host.next_report.remote())
        except ray.exceptions.RayTaskError as exc:  # the worker loop's own error, as the trial's
            if isinstance(exc.cause, Exception):
                raise exc.cause from None
            raise
        if isinstance(item, TrialSummary):
            return item
        uri = report_to_tune(*item)
        if uri is not None:
            ray.get(host.stored.remote(uri))


def start_host(node: str) -> ray.actor.ActorHandle:
    """A new TrialHost on `node`."""
    return TrialHost.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()


def warm_hosts(resources: ResourcesSpec, capacity: int) -> dict[tuple[str, int], ray.actor.ActorHandle]:
    """The hosts that each alive node can use (host_slots), started now, before any trial asks for one."""
    return {(node, index): start_host(node) for node, count in host_slots(resources, capacity).items()
            for index in range(count)}


def host_slots(resources: ResourcesSpec, capacity: int) -> dict[str, int]:
    """How many warm trial processes to start on each alive node: the trials it can run at once, `capacity`
    in all. Nodes that join later get theirs when a trial there first asks."""
    per_node, left = {}, capacity
    for node in ray.nodes():
        if node["Alive"] and left > 0:
            per_node[node["NodeID"]] = count = min(left, slot_capacity(resources, node["Resources"]))
            left -= count
    return {node: count for node, count in per_node.items() if count}
