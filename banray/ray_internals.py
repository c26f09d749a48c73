"""The private Ray APIs banray relies on, in one place: each has a test (tests/test_ray_internals.py) that
fails when a Ray upgrade moves or changes it.

- A local cluster on loopback: `ray.init` resolves a node address of 127.0.0.1 to the machine's network
  address, and its GCS, raylet, workers and agents then listen on every interface. Ray binds them to
  loopback only when it thinks clusters are off (its default on macOS and Windows), a switch read from
  `ray_constants` at call time.
- The head node of a cluster this process started (to stop its autoscaler monitor first).
- The loggers of Ray's token notice and of Train V2's per-report lines, named after private modules.
- Ray Tune's trial process: the class of a function trainable, where a reported checkpoint was stored, the keys
  Tune adds to every result, and the AWS credentials it copies into every trial's runtime env.
- Ray Tune's saved experiment state: its files' names, and their saving only between uploads of the last one.

Ray Tune's and Train's modules are imported where they are used: a sweep's start and the commands that only
read a sweep folder do not load Tune (a second and a half).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Callable, Iterator

import pyarrow.fs as pafs
from ray._private import ray_constants, services
from ray._private import worker as ray_worker

from banray.environment import set_variables, variables_for_a_while

logger = logging.getLogger(__name__)

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
    with loopback_as_given(), variables_for_a_while({ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR: "0"}):
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



def function_trainable(function: Callable[[dict], None]):
    """The class Tune makes of a function trainable (to subclass: `tune.with_resources` takes either)."""
    from ray.tune.trainable.function_trainable import wrap_function

    return wrap_function(function)


def reported_checkpoint() -> tuple[str, pafs.FileSystem]:
    """(path, filesystem) of the checkpoint this Tune trial reported last, where Tune stored it."""
    import ray.tune as tune

    storage = tune.get_context().get_storage()  # a ray.train._internal.storage.StorageContext
    return storage.checkpoint_fs_path, storage.storage_filesystem


def tune_result_keys() -> frozenset[str]:
    """What Tune adds to every result a trial reports, beside the trial's own metrics."""
    from ray.tune.result import AUTO_RESULT_KEYS

    return frozenset(AUTO_RESULT_KEYS)


# The credentials Ray Tune copies from the process that runs a Tuner into every trial's runtime env.
TUNE_PROPAGATED_SECRETS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"})


def keep_credentials_out_of_tune() -> None:
    """Stop Ray Tune from copying AWS credentials into every trial's runtime env: Ray writes runtime envs in
    plain text into its session logs (runtime_env_agent.log) and task specs. A trial reads the credentials of
    the node it runs on, as every other Ray process of the sweep does."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = frozenset(class_cache.ENV_VARS_TO_PROPAGATE - TUNE_PROPAGATED_SECRETS)


def experiment_state_files() -> str:
    """The pattern of a Tune run's saved experiment states' names (one per save; the newest is restored)."""
    from ray.tune.execution.tune_controller import TuneController

    return TuneController.CKPT_FILE_TMPL.format("*")


def save_tune_state_only_between_uploads() -> None:
    """Stop Ray Tune from rewriting its experiment state while the last upload of it still reads the files.
    Tune saves the state to a staging folder (truncate, then write) and uploads that folder in a background
    thread; it saves again without checking that the upload is over, which then copies half a file, and a
    resumed sweep cannot continue that run. A save while an upload is in flight is put off to a later step of
    Tune's loop, or, when forced, waits for the upload."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager as manager

    if getattr(manager.sync_up_experiment_state, "between_uploads", False):
        return
    save = manager.sync_up_experiment_state

    def save_between_uploads(self, save_fn, force: bool = False, wait: bool = False) -> None:
        syncer = self._storage.syncer
        if syncer._should_continue_existing_sync():
            if not (force or self._should_force_sync_up):
                return
            try:
                syncer.wait()
            except Exception as exc:  # the upload's own failure; Tune logs it the same way and goes on
                logger.error("storage: uploading Tune's experiment state failed: %s", exc)
        save(self, save_fn, force=force, wait=wait)

    save_between_uploads.between_uploads = True
    manager.sync_up_experiment_state = save_between_uploads
