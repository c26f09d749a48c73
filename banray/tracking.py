"""MLflow tracking: one experiment per sweep, one run per (chain, generation), a child run per trial.

Parent links are set explicitly with the `mlflow.parentRunId` tag, because the active-run stack does
not cross the process boundaries between the driver, the Tune trials and the Train workers. Runs are
created through `MlflowClient` with an explicit run id everywhere, so no process depends on another's
global MLflow state.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
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


def log_metrics(client, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step or 0) for k, v in metrics.items()])


def end_run(tracking: Tracking, run_id: str, status: str = "FINISHED") -> None:
    tracking.client().set_terminated(run_id, status=status)


def log_model(tracking: Tracking, run_id: str, model, input_example) -> str:
    """Log `model` as an MLflow PyTorch model of run `run_id`; returns its model URI."""
    import mlflow
    import mlflow.pytorch

    # MLflow warns about pickle on every call; banray picks it knowingly (see below) and loads its own
    # checkpoints with weights_only=True, never through this model.
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    # The fluent API needs the global tracking URI, which MLflow also exports to os.environ (and so to
    # every later subprocess): put back what was there.
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking.uri)
    try:
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                # "pickle" loads back as the real nn.Module; pinning requirements skips an 8 s inference.
                serialization_format="pickle",
                pip_requirements=["torch==2.13.0", "banray"],
                input_example=input_example,
            )
    finally:
        mlflow.set_tracking_uri(previous)
    return info.model_uri


def log_artifacts(tracking: Tracking, run_id: str, paths: list[Path]) -> None:
    client = tracking.client()
    for path in paths:
        client.log_artifact(run_id, str(path))
