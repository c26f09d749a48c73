"""MLflow tracking: one experiment per sweep, one run per (chain, generation), a child run per trial.

Parent links are set explicitly with the `mlflow.parentRunId` tag, because the active-run stack does
not cross the process boundaries between the driver, the Tune trials and the Train workers. Runs are
created through `MlflowClient` with an explicit run id everywhere, so no process depends on another's
global MLflow state.
"""

from __future__ import annotations

import getpass
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from banray.selection import best_generation

TAG_PREFIX = "banray."


@dataclass(frozen=True)
class Tracking:
    uri: str
    experiment: str
    artifact_location: str | None  # set only for the local store, so artifacts stay in the sweep folder

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)


HEALTH_TIMEOUT_S = 5.0


def server_problem(uri: str, timeout: float = HEALTH_TIMEOUT_S) -> str | None:
    """Why the tracking server at `uri` (http or https) cannot be used, or None if its /health answers 200.
    One GET with `timeout`, no retries: a command a person waits on learns in seconds that nothing answers."""
    import requests

    health = uri.rstrip("/") + "/health"
    try:
        response = requests.get(health, timeout=timeout)
    except requests.RequestException as exc:
        return f"{uri} does not answer ({type(exc).__name__}: {exc})"
    if response.status_code != 200:
        return f"{health} answered HTTP {response.status_code}, not 200"
    return None


@contextmanager
def impatient_http(retries: int = 2, timeout_s: int = 10):
    """MLflow's HTTP client retries a request 7 times with exponential backoff and waits up to 120 s for
    each answer (about 4 minutes before a dead server is given up on). For a command a person waits on:
    `retries` retries, 1 s backoff, `timeout_s` per request, each unless the environment sets its own;
    the environment is put back afterwards."""
    settings = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s),
    }
    added = [name for name in settings if name not in os.environ]
    os.environ.update({name: settings[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@dataclass(frozen=True)
class LocalStore:
    """What a tracking URI naming a store on this machine points at, found without creating anything."""

    kind: str  # "sqlite", or "file" (MLflow's file store: a folder path or a file:// URI)
    path: Path | None  # absolute; None for an in-memory SQLite database
    exists: bool  # an MLflow store is there
    problem: str | None = None  # why the URI cannot serve as a store, if it cannot


# Tables every MLflow SQL store has; a SQLite database without them belongs to something else.
_MLFLOW_TABLES = {"alembic_version", "experiments", "runs", "registered_models"}


def local_store(uri: str) -> LocalStore | None:
    """The local store `uri` names, looked at read-only (a SQLite file opened with mode=ro, a folder
    listed), or None if `uri` is not local (a tracking server, a database server). MLflow's client
    creates a missing local store, with its parent folders, so a command that only looks must ask
    here and not open one through MLflow."""
    from mlflow.utils.uri import get_uri_scheme

    scheme = get_uri_scheme(uri)
    if scheme == "sqlite":
        return _sqlite_store(uri)
    if scheme in ("", "file"):
        return _file_store(uri)
    return None


def _sqlite_store(uri: str) -> LocalStore:
    import sqlite3
    from contextlib import closing

    from sqlalchemy.engine import make_url

    try:
        database = make_url(uri).database
    except Exception as exc:  # SQLAlchemy's ArgumentError, ValueError: the URI cannot be parsed
        return LocalStore("sqlite", None, False, f"not a SQLite URI SQLAlchemy can read ({exc})")
    if not database or database == ":memory:":
        return LocalStore("sqlite", None, False, "an in-memory SQLite database keeps nothing once its process "
                          "ends, and every Ray worker would get its own")
    path = Path(os.path.abspath(database))
    if not path.exists():
        return LocalStore("sqlite", path, False)
    if not path.is_file():
        return LocalStore("sqlite", path, False, f"{path} is a folder, not a SQLite file")
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = None
            if "alembic_version" in tables:
                row = db.execute("SELECT version_num FROM alembic_version").fetchone()
                version = row[0] if row else None
    except sqlite3.Error as exc:
        return LocalStore("sqlite", path, False, f"{path} is not a readable SQLite database ({exc})")
    if not tables:
        return LocalStore("sqlite", path, False)  # an empty file: MLflow would set its tables up in it
    if not _MLFLOW_TABLES <= tables:
        return LocalStore("sqlite", path, False, f"{path} is a SQLite database but not an MLflow store "
                          f"(no {', '.join(sorted(_MLFLOW_TABLES - tables))} table)")
    expected = _schema_head()
    if expected is not None and version != expected:
        import mlflow

        return LocalStore("sqlite", path, True, f"its MLflow schema is version {version}, MLflow {mlflow.__version__} "
                          f"needs {expected} (`mlflow db upgrade {uri}` migrates an older store; back it up first)")
    return LocalStore("sqlite", path, True)


def _schema_head() -> str | None:
    """The schema version this MLflow's SQL stores must have, from its migration scripts (no database)."""
    try:
        from mlflow.store.db.utils import _get_latest_schema_revision

        return _get_latest_schema_revision()
    except Exception:  # a private MLflow function: if it moves, skip the comparison rather than fail
        return None


def _file_store(uri: str) -> LocalStore:
    from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
    from mlflow.utils.file_utils import local_file_uri_to_path

    path = Path(os.path.abspath(local_file_uri_to_path(uri)))
    exists, problem = False, None
    if path.is_dir():
        entries = list(path.iterdir())
        exists = (path / ".trash").is_dir() or any(
            entry.name.isdigit() and (entry / "meta.yaml").is_file() for entry in entries
        )
        if entries and not exists:
            problem = f"{path} is a folder that is not an MLflow file store (no .trash, no experiment folder with meta.yaml)"
    elif path.exists():
        problem = f"{path} is a file, not a folder (for a SQLite store write sqlite:///{path})"
    try:
        allowed = MLFLOW_ALLOW_FILE_STORE.get()
    except ValueError:
        allowed = False
    if not allowed and problem is None:
        problem = (f"a file store, which MLflow 3 refuses unless MLFLOW_ALLOW_FILE_STORE=true; use a SQLite store, "
                   f"e.g. sqlite:///{path}.db")
    return LocalStore("file", path, exists, problem)


def resolve(spec_uri: str | None, experiment: str, sweep_dir: Path | None) -> Tracking:
    """Spec URI, else $MLFLOW_TRACKING_URI, else a SQLite store inside the (local) sweep folder."""
    uri = spec_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return Tracking(uri, experiment, None)
    assert sweep_dir is not None, "a sweep in object storage needs a tracking URI"
    return Tracking(f"sqlite:///{sweep_dir / 'mlflow.db'}", experiment, (sweep_dir / "mlartifacts").as_uri())


def ensure_experiment(tracking: Tracking) -> str:
    client = tracking.client()
    found = client.get_experiment_by_name(tracking.experiment)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(tracking.experiment, artifact_location=tracking.artifact_location)


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings → flat dotted keys, the form MLflow params take."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def banray_tags(**values: Any) -> dict[str, str]:
    return {f"{TAG_PREFIX}{k}": "" if v is None else str(v) for k, v in values.items()}


def start_run(
    tracking: Tracking,
    experiment_id: str,
    run_name: str,
    tags: dict[str, str],
    params: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> str:
    from mlflow.entities import Param

    client = tracking.client()
    if parent_run_id:
        tags = {**tags, "mlflow.parentRunId": parent_run_id}
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    if params:
        batch = [Param(k, str(v)) for k, v in flatten(params).items()]
        for start in range(0, len(batch), 100):  # MLflow accepts at most 100 params per batch
            client.log_batch(run.info.run_id, params=batch[start : start + 100])
    return run.info.run_id


def start_or_resume_run(
    tracking: Tracking,
    experiment_id: str,
    run_name: str,
    tags: dict[str, str],
    params: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """The run tagged with the same `banray.tune_trial_id`, set running again, if one exists (a trial
    restored by a resumed sweep); else a new run."""
    client = tracking.client()
    trial_id = tags[f"{TAG_PREFIX}tune_trial_id"]
    found = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_PREFIX}tune_trial_id` = '{trial_id}'")
    if found:
        return reopen_run(tracking, found[0].info.run_id)
    return start_run(tracking, experiment_id, run_name, tags, params, parent_run_id)


def reopen_run(tracking: Tracking, run_id: str) -> str:
    """Set an interrupted run running again, so a resumed sweep continues it rather than duplicating it."""
    tracking.client().update_run(run_id, status="RUNNING")
    return run_id


def log_metrics(client, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step or 0) for k, v in metrics.items()])


def end_run(tracking: Tracking, run_id: str, status: str = "FINISHED") -> None:
    tracking.client().set_terminated(run_id, status=status)


_fluent_turn = threading.RLock()


@contextmanager
def _fluent(tracking: Tracking):
    """Point MLflow's fluent API at `tracking` for a moment. MLflow also exports the global tracking URI
    to os.environ (and so to every later subprocess): put back what was there. The fluent state is one per
    process, so threads of a GroupRunner take turns."""
    import mlflow

    with _fluent_turn:
        previous = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(tracking.uri)
        try:
            yield mlflow
        finally:
            mlflow.set_tracking_uri(previous)


def log_model(tracking: Tracking, run_id: str, model, input_example) -> str:
    """Log `model` as an MLflow PyTorch model of run `run_id`; returns its model URI."""
    import mlflow.pytorch

    # MLflow warns about pickle on every call; banray picks it knowingly (see below) and loads its own
    # checkpoints with weights_only=True, never through this model.
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    with _fluent(tracking) as mlflow, mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            # "pickle" loads back as the real nn.Module; pinning requirements skips an 8 s inference.
            serialization_format="pickle",
            pip_requirements=["torch==2.13.0", "banray"],
            input_example=input_example,
        )
    return info.model_uri


def register(tracking: Tracking, name: str, model_uri: str, tags: dict[str, str]) -> str:
    """Register a logged model as a new version of registered model `name`; returns the version."""
    with _fluent(tracking) as mlflow:
        return mlflow.register_model(model_uri, name, tags=tags).version


def promote(tracking: Tracking, name: str, version: str, alias: str = "best") -> None:
    """Point `alias` at `version` by hand, recording who did it and when on the version."""
    client = tracking.client()
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, f"{TAG_PREFIX}promoted_by", getpass.getuser())
    client.set_model_version_tag(name, version, f"{TAG_PREFIX}promoted_at", datetime.now(timezone.utc).isoformat())


def log_artifacts(tracking: Tracking, run_id: str, paths: list[Path]) -> None:
    client = tracking.client()
    for path in paths:
        client.log_artifact(run_id, str(path))


def register_generations(tracking: Tracking, name: str, records: list, metric: str) -> dict[str, str]:
    """Register every finished generation's model as a version of registered model `name`.

    Aliases: `chain<c>-gen-<k>` for each version; `gen-<k>`, generation k of the chain with the lowest
    validation `metric`; `best`, the lowest over all generations (ties go to the earlier generation).
    Returns alias → version.
    """
    finished = [r for r in records if r.status == "finished" and r.model_uri]
    if not finished:
        return {}
    version = {
        (r.chain, r.generation): register(
            tracking, name, r.model_uri,
            tags=banray_tags(chain=r.chain, generation=r.generation, run_id=r.mlflow_run_id, **{metric: getattr(r, metric)}),
        )
        for r in finished
    }
    aliases = {f"chain{c}-gen-{k}": v for (c, k), v in version.items()}
    for k in sorted({r.generation for r in finished}):
        best_k = best_generation((r for r in finished if r.generation == k), metric)
        aliases[f"gen-{k}"] = version[best_k.chain, k]
    best = best_generation(finished, metric)
    aliases["best"] = version[best.chain, best.generation]
    client = tracking.client()
    for alias, v in aliases.items():
        client.set_registered_model_alias(name, alias, v)
    return aliases
