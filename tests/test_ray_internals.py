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


def test_a_function_trainable_is_a_tune_trainable_of_that_function():
    import ray.tune as tune

    def trial(config):
        tune.report({"x": 1})

    trainable = ray_internals.function_trainable(trial)
    assert issubclass(trainable, tune.Trainable) and trainable._name == "trial"


def test_a_tune_trial_finds_its_reported_checkpoint_where_tunes_storage_context_keeps_it():
    import inspect

    import ray.tune as tune
    from ray.train._internal.storage import StorageContext

    assert "get_storage" in dir(tune.get_context())
    assert isinstance(inspect.getattr_static(StorageContext, "checkpoint_fs_path"), property)
    assert "self.storage_filesystem" in inspect.getsource(StorageContext.__init__)


def test_tunes_own_result_keys_are_what_it_adds_to_every_result():
    assert {"training_iteration", "time_this_iter_s", "timestamp", "pid", "hostname"} <= ray_internals.tune_result_keys()


def test_keeping_credentials_out_of_tune_removes_them_from_what_it_propagates():
    from ray.tune.execution import class_cache

    rays_own = subprocess.run([sys.executable, "-c", "from ray.tune.execution import class_cache\n"
                               "print(' '.join(sorted(class_cache.ENV_VARS_TO_PROPAGATE)))"],
                              capture_output=True, text=True, check=True).stdout.split()
    assert ray_internals.TUNE_PROPAGATED_SECRETS & set(rays_own)  # Ray copies them unless told not to
    ray_internals.keep_credentials_out_of_tune()
    assert not ray_internals.TUNE_PROPAGATED_SECRETS & class_cache.ENV_VARS_TO_PROPAGATE
    assert isinstance(class_cache.ENV_VARS_TO_PROPAGATE, frozenset)


def test_tunes_saved_states_are_named_as_banray_looks_for_them():
    import fnmatch

    assert fnmatch.fnmatch("experiment_state-2026-12-07_16-10-00.json", ray_internals.experiment_state_files())
    assert not fnmatch.fnmatch("tuner.pkl", ray_internals.experiment_state_files())


def test_tunes_state_saving_is_put_off_while_its_last_upload_runs():
    import inspect

    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager as manager

    ray_internals.save_tune_state_only_between_uploads()
    patched = manager.sync_up_experiment_state
    assert patched.between_uploads
    ray_internals.save_tune_state_only_between_uploads()  # once only
    assert manager.sync_up_experiment_state is patched
    assert list(inspect.signature(patched).parameters) == ["self", "save_fn", "force", "wait"]
    from ray.train._internal.syncer import _BackgroundSyncer

    assert callable(_BackgroundSyncer._should_continue_existing_sync) and callable(_BackgroundSyncer.wait)
