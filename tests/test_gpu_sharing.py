"""Several trials per GPU: a fractional `resources.gpus_per_worker` is honoured by Ray's scheduling. A real
`ray start` head with one logical GPU (Ray schedules GPUs it is told of; no CUDA is needed to place them, and a
trial without CUDA trains on the CPU), and a real sweep whose trials each ask for a quarter of it."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import pytest
import yaml

import servers
from banray.spec import ResourcesSpec
from banray.trial.slots import slot_capacity
from conftest import REPO, tiny_spec

pytestmark = pytest.mark.slow

QUARTER_GPU = {"trainer": "trial", "cpus_per_worker": 0.5, "gpus_per_worker": 0.25}


def test_a_quarter_gpu_trial_makes_four_slots_of_one_gpu():
    assert slot_capacity(ResourcesSpec(**QUARTER_GPU), {"CPU": 2, "GPU": 1}) == 4
    assert slot_capacity(ResourcesSpec(**QUARTER_GPU), {"CPU": 1, "GPU": 1}) == 2  # the CPUs bound it then


@pytest.fixture(scope="module")
def head_with_one_gpu():
    """A head of 2 CPUs and 1 logical GPU, its own process group, stopped by PID; yields its address."""
    temp_dir = Path(tempfile.mkdtemp(prefix="banray-gpu-", dir="/tmp"))
    gcs = servers.free_port()
    address = f"127.0.0.1:{gcs}"
    head = servers.ray_start(temp_dir, head_address=None, num_cpus=2, num_gpus=1, log=temp_dir / "head.log",
                             port=gcs, dashboard_port=servers.free_port(),
                             ray_client_server_port=servers.free_port(), **servers.node_ports())
    try:
        status = [sys.executable, "-c", servers.RAY_CLI_ON_LOOPBACK, "status", f"--address={address}"]
        env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{servers.BIN}:{os.environ['PATH']}"}
        servers.wait_until(lambda: "GPU" in subprocess.run(status, env=env, capture_output=True, text=True).stdout,
                           90, "the Ray head with a GPU")
        yield address
    finally:
        servers.stop_group(head)


def most_at_once(intervals: list[tuple[int, int]]) -> int:
    """The largest number of (start, end) intervals that overlap at one moment."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def test_quarter_gpu_trials_train_side_by_side_on_one_gpu(head_with_one_gpu, tmp_path):
    spec = tiny_spec(name="gpu-share", storage=str(tmp_path / "runs"), train={"epochs": 60, "lr": 0.05},
                     search={"trials": 4, "early_stopping": "off"}, resources=QUARTER_GPU)
    spec_file = tmp_path / "gpu-share.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    completed = subprocess.run(
        [sys.executable, "-m", "banray", "sweep", str(spec_file), "--address", head_with_one_gpu],
        cwd=REPO, env={**os.environ, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    assert "× 4 trial(s); 4 trial(s) at a time" in completed.stdout, completed.stdout[-2000:]

    report = json.loads((tmp_path / "runs" / "gpu-share" / "report.json").read_text())
    client = mlflow.MlflowClient(report["mlflow"]["tracking_uri"])
    experiment = client.get_experiment_by_name("gpu-share")
    trial_runs = client.search_runs([experiment.experiment_id], filter_string="tags.`banray.level` = 'trial'")
    assert len(trial_runs) == 8 and all(run.info.status == "FINISHED" for run in trial_runs)
    # One GPU, and more than one of a generation's trials trained at once: each held a quarter of it.
    for generation in ("0", "1"):
        intervals = [(run.info.start_time, run.info.end_time) for run in trial_runs
                     if run.data.tags["banray.generation"] == generation]
        assert most_at_once(intervals) >= 2, intervals
