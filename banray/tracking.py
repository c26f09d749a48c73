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
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

TAG_PREFIX = "banray."


@dataclass(frozen=True)
class Tracking:
    uri: str
    experiment: str
    artifact_location: str | None  # set only for the local store, so artifacts stay in the sweep folder

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)


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


@contextmanager
def _fluent(tracking: Tracking):
    """Point MLflow's fluent API at `tracking` for a moment. MLflow also exports the global tracking URI
    to os.environ (and so to every later subprocess): put back what was there."""
    import mlflow

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
        best_k = min((r for r in finished if r.generation == k), key=lambda r: (getattr(r, metric), r.chain))
        aliases[f"gen-{k}"] = version[best_k.chain, k]
    best = min(finished, key=lambda r: (getattr(r, metric), r.generation, r.chain))
    aliases["best"] = version[best.chain, best.generation]
    client = tracking.client()
    for alias, v in aliases.items():
        client.set_registered_model_alias(name, alias, v)
    return aliases
