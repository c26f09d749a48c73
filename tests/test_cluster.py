"""A real two-node Ray cluster (`ray start` head + worker node as separate processes on 127.0.0.1), with S3
storage (moto) and an MLflow server: a sweep run with --address and one submitted with `ray job submit`,
with the commands of README's "On a cluster" and "From a laptop"."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import boto3
import pytest
from ray.train import Checkpoint

import servers
from conftest import REPO, S3_SECRETS, TRACKING_SECRETS

pytestmark = pytest.mark.slow



def token_env(**extra: str) -> dict[str, str]:
    """This process's environment (with the S3 variables the fixtures set) for Ray's CLI with token auth."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{servers.BIN}:{os.environ['PATH']}", **extra}


def cluster_nodes(address: str) -> int:
    status = subprocess.run([sys.executable, "-c", servers.RAY_CLI_ON_LOOPBACK, "status", f"--address={address}"],
                            env=token_env(), capture_output=True, text=True)
    return status.stdout.count(" node_") if status.returncode == 0 else 0


def s3_json(key: str) -> dict:
    return json.loads(boto3.client("s3").get_object(Bucket="banray", Key=key)["Body"].read())


@pytest.fixture(scope="module")
def two_nodes(s3_endpoint, tracking_server):
    """A head (1 CPU) and a worker node (1 CPU), each its own process group, stopped by PID. Like a real
    cluster's nodes, they have the S3 variables and MLFLOW_TRACKING_URI in their environment."""
    temp_dir = Path(tempfile.mkdtemp(prefix="banray-2n-", dir="/tmp"))
    os.environ["MLFLOW_TRACKING_URI"] = tracking_server  # inherited by the nodes started below
    gcs, dashboard = servers.free_port(), servers.free_port()
    address = f"127.0.0.1:{gcs}"
    head = servers.ray_start(temp_dir / "head", head_address=None, num_cpus=1, log=temp_dir / "head.log", port=gcs,
                             dashboard_port=dashboard, ray_client_server_port=servers.free_port(),
                             **servers.node_ports())
    node = None
    try:
        servers.wait_until(lambda: cluster_nodes(address) >= 1, 90, "the Ray head")
        node = servers.ray_start(temp_dir / "node", head_address=address, num_cpus=1, log=temp_dir / "node.log",
                                 **servers.node_ports())
        servers.wait_until(lambda: cluster_nodes(address) == 2, 90, "the second Ray node")
        yield address, f"http://127.0.0.1:{dashboard}", temp_dir
    finally:
        for process in (node, head):
            if process is not None:
                servers.stop_group(process)
        os.environ.pop("MLFLOW_TRACKING_URI")
    leftovers = subprocess.run(["pgrep", "-f", str(temp_dir)], capture_output=True, text=True).stdout.split()
    assert leftovers == [], f"Ray processes left behind: {leftovers}"


def test_both_nodes_listen_on_loopback_only(two_nodes):
    temp_dir = str(two_nodes[2])
    sockets = servers.listening_sockets(os.getpid())
    raylets = {pid for *_, pid in sockets if servers.command_name(pid) == "raylet" and temp_dir in servers.command_line(pid)}
    assert len(raylets) == 2, sockets  # both nodes' servers are seen
    assert not [s for s in sockets if not servers.on_loopback(s[0])], sockets


def test_sweep_with_address_trains_on_both_nodes(two_nodes, tracking_server, tmp_path):
    address, _, temp_dir = two_nodes
    # The smoke sweep with trials long enough that a generation's two trials overlap, and so, at 1 CPU each,
    # need both nodes: its 2-epoch trials can end before Tune starts the next, which may then take the same node.
    smoke = (REPO / "sweeps/smoke.yaml").read_text()
    assert "epochs: 2," in smoke
    spec_file = tmp_path / "smoke.yaml"
    spec_file.write_text(smoke.replace("epochs: 2,", "epochs: 40,"))
    completed = subprocess.run(
        [sys.executable, "-m", "banray", "sweep", str(spec_file), "--address", address,
         "--storage", "s3://banray/cluster"],
        cwd=REPO, env=token_env(MLFLOW_TRACKING_URI=tracking_server), capture_output=True, text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    report = s3_json("cluster/smoke/report.json")
    checkpoints = [t["checkpoint"] for g in report["chains"][0]["generations"] for t in g["trials"]]
    nodes = {Checkpoint(c).get_metadata()["node_id"] for c in checkpoints}
    assert len(checkpoints) == 4 and len(nodes) == 2  # the Train workers ran on both nodes

    # The nodes have the credentials in their environment; none reached a file of either node's session
    # folder (Tune would copy them into every trial's runtime env, which Ray logs) or the output.
    places = {str(f): f.read_bytes() for f in temp_dir.rglob("*") if f.is_file() and not f.is_symlink()}
    assert any("runtime_env_agent" in place for place in places)
    places["output"] = (completed.stdout + completed.stderr).encode()
    secrets = {**S3_SECRETS, **TRACKING_SECRETS}
    assert all(os.environ[name] == value for name, value in secrets.items())
    assert [f"{place}: {name}" for place, data in places.items() for name, value in secrets.items()
            if value.encode() in data] == []


def test_ray_job_submit_runs_a_sweep(two_nodes):
    _, dashboard, _ = two_nodes
    completed = subprocess.run(
        [str(servers.BIN / "ray"), "job", "submit", "--address", dashboard, "--runtime-env", "runtime_env.yaml",
         "--", "python", "-m", "banray", "sweep", "sweeps/smoke.yaml", "--storage", "s3://banray/laptop"],
        cwd=REPO, env=token_env(), capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "succeeded" in completed.stdout
    assert "| Chain | Teacher | BAN-1 |" in completed.stdout  # the job's own output, streamed back
    report = s3_json("laptop/smoke/report.json")
    assert [g["status"] for g in report["chains"][0]["generations"]] == ["finished", "finished"]
