"""A sweep's start: check the spec against its data, models and storage, take the sweep folder's lock,
connect to Ray (a local cluster is started here), then run the chains (banray.sweep.driver).

`run(..., resume=True)` reads the sweep state (`state.json`, banray.sweep.state) back: finished generations are
not retrained, an interrupted generation continues its Tune run (finished trials kept, unfinished ones from
their last checkpoints) under the same MLflow run.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Literal

import ray
import torch

from banray.environment import set_variables
from banray.sweep import lock

from banray import ray_internals

from banray.catalog.data import DatasetMissing, SplitTooSmall
from banray.catalog.models import build_model
from banray.records import SweepResult
from banray.results import tracking
from banray.spec import SpecError, SweepSpec, cut, shorten, with_storage
from banray.storage import REPORT_FILE, STATE_FILE, StorageRefused, SweepStorage, refusal, use_endpoint
from banray.sweep.state import SweepState
from banray.training.tasks import make_task
from banray.trial.slots import slot_capacity


def import_driver() -> None:
    """What the driver runs on once Ray is up (the DAG, Tune and Train, the report's statistics and plots,
    MLflow's client and SQL store): seconds of imports."""
    importlib.import_module("banray.sweep.driver")
    tracking.import_client()


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


logging.getLogger(ray_internals.TOKEN_NOTICE_LOGGER).addFilter(_TokenAuthNotice())


def open_storage(spec: SweepSpec) -> SweepStorage:
    """The sweep's folder, with its storage checked reachable; nothing is written."""
    try:
        storage = SweepStorage(spec.storage, spec.name)
        storage.check_reachable()
    except StorageRefused as exc:
        raise SpecError(f"storage: cannot use {exc}") from None
    except (OSError, ValueError) as exc:
        raise SpecError(f"storage: cannot reach {cut(spec.storage.rstrip('/'))}/{spec.name}: {exc}") from None
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
        objection = storage.why_not_a_sweep() if taken else None
    except OSError as exc:
        raise SpecError(f"storage: cannot use {refusal(exc, storage.uri)}") from None
    if objection is not None:
        raise SpecError(
            f"storage: {storage.uri} already exists and {objection}; banray will not write into it or delete it: "
            "give the sweep another name, or pass --storage elsewhere"
        )
    if taken and not overwrite and not resume:
        raise SpecError(
            f"storage: {storage.uri} already holds a sweep named like this one; "
            "rename the sweep, pass --storage elsewhere, or pass --overwrite to replace it"
        )


def load_state(storage: SweepStorage, spec: SweepSpec) -> dict[str, Any]:
    """The state of the interrupted sweep to resume, checked against `spec`."""
    try:
        state = storage.read_json(STATE_FILE)
        if state is None:
            raise SpecError(f"--resume: {storage.uri} holds no sweep state ({STATE_FILE}); run without --resume")
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
    try:
        return storage.read_json(REPORT_FILE) or {}
    except ValueError as exc:
        raise SpecError(
            f"--resume: the sweep in {storage.uri} has finished, but its {REPORT_FILE} is not readable "
            f"({cut(str(exc), 80)}); run it again with --overwrite"
        ) from None


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
    set_variables(env)
    # Under `ray job submit` the job's runtime_env may set the same variables: merge rather than fail.
    set_variables({"RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}, keep_existing=True)
    # A local cluster that ray.init starts inherits this environment. A runtime env would set the variables
    # too, but then every worker process starts through Ray's setup_worker (CPU for each, and a sweep
    # starts many), so it is only for clusters that run elsewhere.
    runtime_env = {"env_vars": env} if cluster else None
    local = {} if cluster else {"include_dashboard": dashboard}
    with ray_internals.connecting_to(cluster):
        # Ray's own INFO lines (one per reported epoch and checkpoint) would bury banray's progress lines.
        ray.init(address=address, runtime_env=runtime_env, logging_config=ray.LoggingConfig(log_level="WARNING"), **local)
    return True


def disconnect() -> None:
    """ray.shutdown(), less the second it spends on a local cluster's autoscaler monitor."""
    ray_internals.stop_monitor_first()
    ray.shutdown()


def connect_while(work: Callable[[], None], *args) -> bool:
    """connect(*args) in this thread (ray.init's signal handlers need the main thread) while another thread
    does `work` (the driver's imports): ray.init spends most of its seconds waiting for what it starts."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="banray-imports") as pool:
        done = pool.submit(work)
        started = connect(*args)
        done.result()
    return started


def needs_dashboard(spec: SweepSpec, asked: bool | None) -> bool:
    """Whether a local cluster for `spec` starts Ray's dashboard: when asked, else only when trials run on
    TorchTrainer (Train's controller calls the State API, which the dashboard serves). Its processes cost
    a short sweep a noticeable share of its CPU (bench/results), and trials on warm hosts never call it."""
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
            started = connect_while(import_driver, address, endpoint_env, needs_dashboard(spec, dashboard))
            return _run_on_ray(spec, sweep_storage, started, echo, previous)
    except lock.SweepLocked as exc:
        raise SpecError(str(exc)) from None
    except StorageRefused as exc:  # the folder, its lock or a file in it cannot be made there
        raise SpecError(f"storage: cannot use {exc}") from None


def _run_on_ray(
    spec: SweepSpec, storage: SweepStorage, started: bool, echo: Callable[[str], None], previous: dict | None
) -> SweepResult:
    """Run the sweep on the connected cluster; shut the connection down after if `started`."""
    from banray.sweep import driver  # imported already, while Ray started (import_driver)

    try:
        capacity = slot_capacity(spec.resources, ray.cluster_resources())
        if capacity < 1:
            raise SpecError(
                f"resources: a trial needs {spec.resources.workers_per_trial} worker(s) × "
                f"{spec.resources.cpus_per_worker} CPU / {spec.resources.gpus_per_worker} GPU, but the cluster has "
                f"{ray.cluster_resources().get('CPU', 0):g} CPU / {ray.cluster_resources().get('GPU', 0):g} GPU"
            )
        return driver.run_chains(spec, storage, capacity, echo, previous)
    finally:
        if started:
            disconnect()
