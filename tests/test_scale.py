"""A sweep at the scale honest statistics need, to its report: 48 chains of one-epoch groups on the session's
2-CPU cluster. 32 chains once trained every group and then died on MLflow's connection pool, running the
chains' ensembles side by side, before writing any report."""

from __future__ import annotations

import json

import mlflow
import pytest

from banray.columns import ensemble_column
from conftest import tiny_spec
from test_faults import finish, start_driver

pytestmark = pytest.mark.slow

CHAINS = 48


def test_a_sweep_of_48_chains_reaches_its_report(ray_cluster, tmp_path):
    spec = tiny_spec(name="scale", chains=CHAINS, generations=1, storage=str(tmp_path / "runs"),
                     train={"epochs": 1, "batch_size": 32, "lr": 0.05}, search={"trials": 1},
                     ensembles={"include_teacher": True})  # each chain's Ens*2 (Teacher, BAN-1) in its own run
    process, log = start_driver(spec, tmp_path, ray_cluster)
    finish(process, log)
    report = json.loads((tmp_path / "runs" / "scale" / "report.json").read_text())
    assert sorted(chain["chain"] for chain in report["chains"]) == list(range(CHAINS))
    client = mlflow.MlflowClient(report["mlflow"]["tracking_uri"])
    runs = client.search_runs([report["mlflow"]["experiment_id"]], max_results=10_000)
    ensembles = [r for r in runs if r.data.tags.get("banray.role") == "ensemble"]
    assert len(ensembles) == CHAINS and {r.info.status for r in ensembles} == {"FINISHED"}
    assert all("ens2_test_error" in r.data.metrics and r.data.tags["banray.column"] == ensemble_column(2)
               for r in ensembles)
