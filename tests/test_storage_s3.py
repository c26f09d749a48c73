"""A sweep whose storage is s3:// on a real S3-compatible server (moto's, on 127.0.0.1), tracked by a real
MLflow server whose artifacts go to the same S3."""

import json
import os
from pathlib import Path

import boto3
import pytest
from conftest import S3_SECRETS, TRACKING_SECRETS, tiny_spec
from mlflow import MlflowClient
from mlflow.entities import ViewType
from ray.train import Checkpoint

from banray.spec import SpecError, parse_spec
from banray.sweep import start as sweep

pytestmark = pytest.mark.slow


def keys(prefix, bucket="banray"):
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def secrets() -> dict[str, str]:
    """What must never leave the environment: the S3 credentials, the MLflow token and Ray's auth token."""
    found = {name: os.environ[name] for name in {**S3_SECRETS, **TRACKING_SECRETS}}
    assert found == {**S3_SECRETS, **TRACKING_SECRETS}  # distinctive values, so a leak cannot go unseen
    token_file = Path("~/.ray/auth_token").expanduser()
    if token_file.is_file():
        found["ray auth token file"] = token_file.read_text().strip()
    if os.environ.get("RAY_AUTH_TOKEN"):
        found["RAY_AUTH_TOKEN"] = os.environ["RAY_AUTH_TOKEN"]
    return {name: value for name, value in found.items() if value}


def leaks(places: dict[str, bytes]) -> list[str]:
    """'<place>: <secret name>' for every secret found in a place (never the secret itself)."""
    found = secrets()
    return [f"{place}: {name}" for place, data in places.items() for name, value in found.items()
            if value.encode() in data]


def mlflow_places(client: MlflowClient, experiment: str, folder: Path) -> dict[str, bytes]:
    """Every param and tag of every run of the experiment, its registered model versions' tags, and every
    artifact file of the summary run (downloaded through the server)."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    places = {f"run {run.info.run_name}": json.dumps([run.data.params, run.data.tags]).encode() for run in runs}
    for version in client.search_model_versions(f"name = '{experiment}'"):
        places[f"model version {version.version}"] = json.dumps(version.tags).encode()
    (summary,) = [run for run in runs if run.data.tags.get("banray.role") == "summary"]
    downloaded = Path(client.download_artifacts(summary.info.run_id, "", str(folder)))
    for file in downloaded.rglob("*"):
        if file.is_file():
            places[f"summary artifact {file.relative_to(downloaded)}"] = file.read_bytes()
    return places


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (Ray's session folder: its logs, runtime envs and task specs)."""
    return {str(f): f.read_bytes() for f in folder.rglob("*") if f.is_file() and not f.is_symlink()}


def test_sweep_with_s3_storage(ray_cluster, ray_temp_dir, s3_endpoint, tracking_server, tmp_path, capfd):
    spec = parse_spec(tiny_spec(name="s3-sweep", storage="s3://banray/sweeps", tracking={"uri": tracking_server},
                                search={"trials": 1}))
    lines = []
    result = sweep.run(spec, echo=lines.append)
    captured = capfd.readouterr()  # the driver's own output and what Ray forwards from its workers
    assert result.sweep_dir == "s3://banray/sweeps/s3-sweep"
    stored = keys("sweeps/s3-sweep/")
    for name in ("spec.yaml", "state.json", "report.json", "report.md", "report.png"):
        assert f"sweeps/s3-sweep/{name}" in stored
    # One-worker trials train in their Tune trial, which keeps its checkpoints in the trial's folder.
    assert any(k.startswith("sweeps/s3-sweep/tune/") and k.endswith("/model.pt") for k in stored)
    assert any(k.startswith("sweeps/s3-sweep/tune/chain0-gen1/") for k in stored)

    body = boto3.client("s3").get_object(Bucket="banray", Key="sweeps/s3-sweep/report.json")["Body"].read()
    teacher, student = json.loads(body)["chains"][0]["generations"]
    assert teacher["checkpoint"].startswith("s3://banray/sweeps/s3-sweep/tune/chain0-gen0/")
    assert student["teacher_checkpoint"] == teacher["checkpoint"]  # generation 1 was taught from S3
    teacher_meta = Checkpoint(teacher["checkpoint"]).get_metadata()
    student_meta = Checkpoint(student["checkpoint"]).get_metadata()
    assert student_meta["teacher"]["trial"] == teacher_meta["trial"] and student_meta["teacher"]["generation"] == 0

    state = json.loads(boto3.client("s3").get_object(Bucket="banray", Key="sweeps/s3-sweep/state.json")["Body"].read())
    assert state["finished"] and [g["status"] for g in state["chains"]["0"]["generations"]] == ["finished"] * 2
    assert state["chains"]["0"]["generations"][1]["checkpoint"] == student["checkpoint"]

    # MLflow's artifacts (the logged models) went through the server to the S3 bucket "mlflow".
    artifacts = boto3.client("s3").list_objects_v2(Bucket="mlflow", Prefix="artifacts/")
    assert any(obj["Key"].endswith("MLmodel") for obj in artifacts.get("Contents", []))

    # No secret reached MLflow, the sweep's storage (spec.yaml, state.json, reports, checkpoints, Tune
    # state) or the output.
    client = MlflowClient(tracking_server)
    places = mlflow_places(client, "s3-sweep", tmp_path)
    assert {"summary artifact spec.yaml", "summary artifact report.json"} <= set(places)
    s3 = boto3.client("s3")
    places.update({f"s3://banray/{key}": s3.get_object(Bucket="banray", Key=key)["Body"].read() for key in stored})
    experiment_id = client.get_experiment_by_name("s3-sweep").experiment_id
    places.update({f"s3://mlflow/{key}": s3.get_object(Bucket="mlflow", Key=key)["Body"].read()
                   for key in keys(f"artifacts/{experiment_id}/", bucket="mlflow")})
    places["echoed lines"] = "\n".join(lines).encode()
    places["stdout"], places["stderr"] = captured.out.encode(), captured.err.encode()
    ray_files = files_under(ray_temp_dir)
    assert any("runtime_env_agent" in f for f in ray_files)  # where Ray logs every runtime env it sets up
    places.update(ray_files)
    assert any(place.startswith("s3://mlflow/") for place in places) and lines
    assert leaks(places) == []
    assert leaks({"a probe": S3_SECRETS["AWS_SECRET_ACCESS_KEY"].encode()}) == ["a probe: AWS_SECRET_ACCESS_KEY"]


def test_s3_storage_needs_a_tracking_server(s3_endpoint, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = parse_spec(tiny_spec(name="untracked", storage="s3://banray/sweeps"))
    with pytest.raises(SpecError, match="tracking.uri: storage is s3://banray/sweeps, so the MLflow store"):
        sweep.run(spec)
    assert keys("sweeps/untracked") == []


def test_unreachable_bucket_is_reported(s3_endpoint):
    spec = parse_spec(tiny_spec(name="nobucket", storage="s3://no-such-bucket/x", tracking={"uri": "http://127.0.0.1:9"}))
    with pytest.raises(SpecError, match="storage: cannot reach s3://no-such-bucket/x/nobucket"):
        sweep.run(spec)
