"""A sweep whose storage is s3:// on a real S3-compatible server (moto's, on 127.0.0.1), tracked by a real
MLflow server whose artifacts go to the same S3."""

import json

import boto3
import pytest
from ray.train import Checkpoint

from banray import sweep
from banray.spec import SpecError, parse_spec
from conftest import tiny_spec

pytestmark = pytest.mark.slow


def keys(prefix):
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket="banray", Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def test_sweep_with_s3_storage(ray_cluster, s3_endpoint, tracking_server):
    spec = parse_spec(tiny_spec(name="s3-sweep", storage="s3://banray/sweeps", tracking={"uri": tracking_server},
                                search={"trials": 1}))
    result = sweep.run(spec, echo=lambda line: None)
    assert result.sweep_dir == "s3://banray/sweeps/s3-sweep"
    stored = keys("sweeps/s3-sweep/")
    for name in ("spec.yaml", "state.json", "report.json", "report.md", "report.png"):
        assert f"sweeps/s3-sweep/{name}" in stored
    assert any(k.startswith("sweeps/s3-sweep/train/") and k.endswith("/model.pt") for k in stored)
    assert any(k.startswith("sweeps/s3-sweep/tune/chain0-gen1/") for k in stored)

    body = boto3.client("s3").get_object(Bucket="banray", Key="sweeps/s3-sweep/report.json")["Body"].read()
    teacher, student = json.loads(body)["chains"][0]["generations"]
    assert teacher["checkpoint"].startswith("s3://banray/sweeps/s3-sweep/train/")
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
