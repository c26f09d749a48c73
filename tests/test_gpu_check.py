"""The prepared device check (bench/gpu_check.py) runs as the GPU machine would run it, without Ray, MLflow,
Optuna, pyarrow or tenacity: here in its --smoke form, tiny models on CPU, every measurement made."""

import json
import subprocess
import sys

import pytest
from conftest import REPO
from test_training_core import WITH_BANRAY, WITHOUT_FULL_INSTALL

pytestmark = pytest.mark.slow

RUN_THE_CHECK = WITHOUT_FULL_INSTALL + "\nimport runpy\nrunpy.run_module('bench.gpu_check', run_name='__main__')\n"


def test_the_device_check_runs_without_the_full_install(tmp_path):
    out = tmp_path / "gpu_check.json"
    completed = subprocess.run([sys.executable, "-c", RUN_THE_CHECK, "--smoke", "--out", str(out)], cwd=REPO,
                               env=WITH_BANRAY, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["smoke"] and result["targets"] == "not judged: CPU smoke run"
    assert [(row["model"], row["batch"]) for row in result["throughput"]] == [
        ("wrn-10-1", 64), ("wrn-10-1", 128), ("densenet-bc-10-4", 64), ("densenet-bc-10-4", 128)]
    for row in result["throughput"]:
        assert row["plain"]["images_per_s"] > 0 and row["banray"]["images_per_s"] > 0
        assert 0 < row["banray"]["views_share"] < 1
    checks = result["generations"]
    assert checks["every best checkpoint reloads with its saved val_error"], checks
    assert checks["cached teacher = online teacher"], checks
    assert [(row["model"], row["processes"], len(row["per_process"])) for row in result["sharing"]] == [
        ("wrn-10-1", 1, 1), ("wrn-10-1", 2, 2), ("densenet-bc-10-4", 1, 1), ("densenet-bc-10-4", 2, 2)]
    assert all(rate > 0 for row in result["sharing"] for rate in row["per_process"])
