"""The private Ray APIs banray relies on (banray.ray_internals), each checked against the installed Ray, and
the promise they keep: a cluster banray or the tests start on one machine listens on loopback only."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

import servers
from banray import ray_internals

# A fresh Python that starts a local cluster through banray's connect(), runs a task and an actor (so that
# worker processes listen too), says so, and waits for a line on stdin before it stops the cluster.
LOCAL_CLUSTER = """
import sys, ray
from banray.sweep import start as sweep
assert sweep.connect(None, {{}}, {dashboard})
@ray.remote
class Echo:
    def ping(self):
        return "pong"
assert ray.get(Echo.remote().ping.remote()) == "pong"
assert ray.get(ray.remote(lambda: 1).remote()) == 1
print("ready", flush=True)
sys.stdin.readline()
sweep.disconnect()
"""


@pytest.mark.slow
@pytest.mark.parametrize("dashboard", [False, True])
def test_a_local_cluster_banray_starts_listens_on_loopback_only(dashboard):
    process = subprocess.Popen([sys.executable, "-c", LOCAL_CLUSTER.format(dashboard=dashboard)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready", process.stderr.read()
        sockets = [(*socket, servers.command_name(socket[2])) for socket in servers.listening_sockets(process.pid)]
    finally:
        process.communicate("stop\n", timeout=120)
    assert process.returncode == 0
    assert {"gcs_server", "raylet"} <= {name for *_, name in sockets}, sockets  # the check sees Ray's servers
    assert not [s for s in sockets if not servers.on_loopback(s[0])], sockets


@pytest.mark.slow
def test_the_servers_the_test_session_starts_listen_on_loopback_only(ray_cluster, tracking_server):
    """The session's Ray cluster, S3 server and MLflow server: every socket listening in this process or below."""
    sockets = servers.listening_sockets(os.getpid())
    assert len(sockets) >= 4, sockets
    assert not [s for s in sockets if not servers.on_loopback(s[0])], sockets


def test_the_loopback_switch_is_the_one_ray_reads_and_reaches_the_processes_it_starts(monkeypatch):
    from ray._private import ray_constants, services

    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    monkeypatch.delenv(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, raising=False)
    with ray_internals.loopback_only():
        assert ray_constants.ENABLE_RAY_CLUSTER is False
        assert services.resolve_ip_for_localhost("127.0.0.1") == "127.0.0.1"
        script = "from ray._private import ray_constants; print(ray_constants.ENABLE_RAY_CLUSTER)"
        assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True).stdout == "False\n"
    assert ray_constants.ENABLE_RAY_CLUSTER is True
    assert ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR not in os.environ


def test_train_reports_are_logged_under_the_logger_banray_quiets():
    from ray.train.v2._internal.execution import context

    assert context.logger is ray_internals.train_report_logger()
    assert isinstance(context.logger, logging.Logger)


def test_the_token_notice_logger_is_rays():
    from ray._private.authentication import authentication_token_setup

    assert authentication_token_setup.__name__ == ray_internals.TOKEN_NOTICE_LOGGER


@pytest.mark.slow
def test_the_head_node_is_that_of_the_cluster_this_process_started(ray_cluster):
    assert ray_internals.started_head_node().gcs_address == ray_cluster


@pytest.mark.parametrize("cluster, local", [
    (None, True), ("127.0.0.1:6379", True), ("localhost:6379", True), ("[::1]:6379", True),
    ("10.0.0.5:6379", False), ("head:6379", False), ("auto", False), ("ray://127.0.0.1:10001", False),
])
def test_a_cluster_of_this_machine_is_one_started_here_or_at_a_loopback_address(cluster, local):
    assert ray_internals.on_loopback(cluster) is local
