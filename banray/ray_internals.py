"""The private Ray APIs banray relies on, in one place: each has a test (tests/test_ray_internals.py) that
fails when a Ray upgrade moves or changes it.

- A local cluster on loopback: `ray.init` resolves a node address of 127.0.0.1 to the machine's network
  address, and its GCS, raylet, workers and agents then listen on every interface. Ray binds them to
  loopback only when it thinks clusters are off (its default on macOS and Windows), a switch read from
  `ray_constants` at call time.
- `ray start --node-ip-address=127.0.0.1` resolves the address the same way; `ray_cli_on_given_address` keeps
  it, so a cluster of `ray start` nodes on one machine (the tests' two-node cluster) listens on loopback too.
- The head node of a cluster this process started (to stop its autoscaler monitor first).
- The loggers of Ray's token notice and of Train V2's per-report lines, named after private modules.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
from collections.abc import Iterator

from ray._private import ray_constants, services
from ray._private import worker as ray_worker

TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


def connecting_to(cluster: str | None) -> contextlib.AbstractContextManager:
    """What `ray.init(address=cluster)` runs within (None: a new local cluster): a cluster of this machine
    alone listens on loopback only (Ray's token is then not its only guard), and one reached at a loopback
    address is such a cluster, which Ray would look for at the network address."""
    return loopback_only() if on_loopback(cluster) else contextlib.nullcontext()


def on_loopback(cluster: str | None) -> bool:
    """Whether a cluster address (None: a new local cluster) names this machine's loopback interface."""
    if cluster is None:
        return True
    host = cluster.rpartition(":")[0].strip("[]") if "://" not in cluster else ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, "auto", a URL
        return False


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Within it, a local cluster that `ray.init` starts takes 127.0.0.1 as its node address, and every
    server Ray binds to the node address (GCS, raylet, object manager, workers, dashboard and its agents,
    runtime-env agent) listens on loopback only; the processes it starts keep the switch (through the
    environment), so they too reach 127.0.0.1 as given. For clusters of one machine: no other node could
    reach it."""
    with loopback_as_given(), _environment(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "0"):
        yield


@contextlib.contextmanager
def loopback_as_given() -> Iterator[None]:
    """Within it, this process's Ray calls take 127.0.0.1 as given instead of the machine's network address:
    a driver reaches a cluster listening on loopback, and `ray.init` starts one there."""
    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def ray_cli_on_given_address() -> None:
    """Ray's command line (`ray start ...` from sys.argv), with a node address of 127.0.0.1 kept as given
    instead of resolved to the machine's network address, so that the node's servers bind to loopback. The
    node's processes get the loopback switch through their environment; this process keeps clusters on, as
    `ray start --address` refuses to join one without them."""
    from ray.scripts.scripts import main  # the CLI's own imports, only where the CLI runs

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    services.resolve_ip_for_localhost = lambda host: host
    main()


def started_head_node():
    """The head node this process started with `ray.init`, or None (connected to a running cluster, or not
    connected)."""
    node = ray_worker._global_node
    return node if node is not None and node.is_head() else None


def stop_monitor_first() -> None:
    """Kill the autoscaler monitor of the cluster this process started, if any, before `ray.shutdown()`:
    Ray stops the GCS first, and the monitor's SIGTERM handler then waits on the dead GCS until Ray kills
    it a second later. A local cluster has nothing to autoscale."""
    node = started_head_node()
    if node is not None:
        node.kill_monitor(check_alive=False)


def train_report_logger() -> logging.Logger:
    """Train V2 logs every report at INFO under a logger named after its source file, outside the
    "ray.train" hierarchy that RunConfig.logging_config filters."""
    from ray.train.v2._internal.execution import context as train_context  # Train is not loaded by every user

    return logging.getLogger(train_context.__file__)
