"""The sweep's worker slots: how many trials train at once, which trial trains next, and, for trials that
train on warm hosts, which host each one uses. Light on imports: the Tune trial that drives a host
(banray.trial.hosts) takes its slot here, and that process should not import torch."""

from __future__ import annotations

import asyncio
import itertools
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

import ray

if TYPE_CHECKING:
    from banray.spec import ResourcesSpec


@ray.remote(num_cpus=0)
class WorkerSlots:
    """A counting semaphore over the cluster's worker slots, shared by every group of a sweep.

    Holders are trial actors. ASHA stops a trial by killing its actor, so a holder may never release:
    while trials wait, slots of dead holders (and dead waiters) are reclaimed. A free slot goes to the
    waiting trial of the best priority, then the longest waiting: trials on a chain's critical path
    (earlier generations) before later ones, the control arm last. It also adds up busy slot-seconds.

    It holds the sweep's warm trial processes (banray.trial.hosts), per node one for each slot the node can hold
    (`hosts`, started by the driver as soon as Ray is up; those of nodes that join later, as a trial there
    first asks): a holder that trains on a host gets one no other holder on its node has. The hosts live as
    long as the pool.
    """

    RECLAIM_EVERY_S = 2.0
    POLL_S = 0.05

    def __init__(self, capacity: int, start_host: Callable[[str], ray.actor.ActorHandle],
                 hosts: dict[tuple[str, int], ray.actor.ActorHandle] | None = None):
        self.capacity = capacity
        self.holders: dict[str, float] = {}  # actor id → when it took its slot
        self.waiting: set[tuple[tuple, float, str]] = set()  # (priority, since, actor id)
        self.busy_s = 0.0
        self.last_reclaim = 0.0
        self.hosts = dict(hosts or {})  # (node id, index) → its TrialHost
        self.start_host = start_host  # banray.trial.hosts.start_host: a host on a node, for those that join later
        self.host_of: dict[str, tuple[str, int]] = {}  # holder → the host it trains on
        # Explicit, since the State API would otherwise refuse to guess between several Ray instances.
        self.cluster = ray.get_runtime_context().gcs_address

    async def acquire(self, holder: str, priority: tuple = ()) -> None:
        ticket = (tuple(priority), time.monotonic(), holder)
        self.waiting.add(ticket)
        try:
            while len(self.holders) >= self.capacity or min(self.waiting) != ticket:
                if time.monotonic() - self.last_reclaim > self.RECLAIM_EVERY_S:
                    self._reclaim_dead()
                if ticket not in self.waiting:  # its trial died while it waited
                    return
                await asyncio.sleep(self.POLL_S)
        finally:
            self.waiting.discard(ticket)
        self.holders[holder] = time.monotonic()

    async def release(self, holder: str) -> None:
        taken = self.holders.pop(holder, None)
        if taken is not None:
            self.busy_s += time.monotonic() - taken
        self.host_of.pop(holder, None)

    async def host(self, holder: str, node: str) -> ray.actor.ActorHandle:
        """A TrialHost on `node` for `holder`, which holds a slot: one that none of the node's other holders has."""
        taken = {index for other, (on, index) in self.host_of.items() if on == node and other in self.holders}
        self.host_of[holder] = key = (node, next(i for i in itertools.count() if i not in taken))
        return self._host(key)

    def _host(self, key: tuple[str, int]) -> ray.actor.ActorHandle:
        if key not in self.hosts:  # a node that joined after the sweep started
            self.hosts[key] = self.start_host(key[0])
        return self.hosts[key]

    def _reclaim_dead(self) -> None:
        from ray.util.state import get_actor

        self.last_reclaim = time.monotonic()
        def dead(actor_id: str) -> bool:
            state = get_actor(actor_id, address=self.cluster)
            return state is None or state.state == "DEAD"

        for holder in [h for h in self.holders if dead(h)]:
            self.busy_s += time.monotonic() - self.holders.pop(holder)
            if holder in self.host_of:  # what it left training on its host is for nobody
                self.hosts[self.host_of.pop(holder)].cancel.remote()
        self.waiting -= {ticket for ticket in self.waiting if dead(ticket[2])}

    async def busy_seconds(self) -> float:
        now = time.monotonic()
        return self.busy_s + sum(now - taken for taken in self.holders.values())


def slot_capacity(resources: ResourcesSpec, cluster: dict[str, float]) -> int:
    """How many trials' workers the cluster (or one node, given its resources) can run at once (0 if not
    even one trial fits)."""
    per_trial = {"CPU": resources.workers_per_trial * resources.cpus_per_worker}
    if resources.gpus_per_worker:
        per_trial["GPU"] = resources.workers_per_trial * resources.gpus_per_worker
    return int(min(cluster.get(name, 0.0) // need for name, need in per_trial.items()))


def slot_priority(arm: str, generation: int) -> tuple:
    """A waiting trial's place in the queue: a chain's earlier generations (its critical path) first, the
    side arms last."""
    return (arm != "main", generation)


@contextmanager
def holding_a_slot(slots_actor: str, priority: tuple) -> Iterator[ray.actor.ActorHandle]:
    """Hold one of the sweep's slots (waiting for it in `priority` order) as this actor; yields the pool."""
    slots = ray.get_actor(slots_actor)
    holder = ray.get_runtime_context().get_actor_id()
    ray.get(slots.acquire.remote(holder, priority))
    try:
        yield slots
    finally:
        ray.get(slots.release.remote(holder))
