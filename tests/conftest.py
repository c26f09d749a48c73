"""Shared fixtures. Slow tests start a real local Ray cluster (2 CPUs, its own temp dir)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import fakedata
from banray import ray_internals

REPO = Path(__file__).resolve().parents[1]

# Generated CIFAR files cannot match torchvision's MD5 sums: skip only that check, here and (through
# the cluster's worker setup hook below) in every Ray worker process.
fakedata.allow_unverified_cifar()

# Ray's sockets live under the temp dir, whose path must stay short.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


def tiny_spec(**overrides) -> dict:
    """A valid spec dict on synthetic data, small enough to train in seconds."""
    spec = {
        "name": "tiny",
        "data": {"dataset": "synthetic", "val_fraction": 0.2, "seed": 0},
        "model": {"arch": "cnn", "kwargs": {"width": 8}},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.05},
        "distill": {"objective": "ban"},
        "generations": 1,
        "chains": 1,
        "control": False,  # the control arm doubles generation 0's work; tests that need it turn it on
        "search": {"trials": 2},
    }
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        if field:
            spec[section] = {**spec.get(section, {}), field: value}
        else:
            spec[key] = value
    return spec


# Fake S3 credentials that cannot occur by chance: tests/test_storage_s3.py looks for them in everything
# a sweep leaves behind (MLflow, storage, output).
S3_SECRETS = {
    "AWS_ACCESS_KEY_ID": "BANRAYTESTKEY4B1E2D",
    "AWS_SECRET_ACCESS_KEY": "banray-test-secret-7f3a9c",
    "AWS_SESSION_TOKEN": "banray-test-session-token-2c8e",
}
# An MLflow token in the environment, as a tracking server with authentication needs (the tests' server
# ignores it); it must not leak either.
TRACKING_SECRETS = {"MLFLOW_TRACKING_TOKEN": "banray-test-mlflow-token-5d21"}


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 for the whole session, with buckets 'banray' and 'mlflow'.
    Started before the Ray cluster so that Ray's processes inherit the AWS variables."""
    import servers

    with servers.moto_s3() as endpoint:
        os.environ.update(S3_SECRETS)  # moto takes any credentials; moto_s3 restores the old values on exit
        os.environ.update(TRACKING_SECRETS)
        yield endpoint
        for name in TRACKING_SECRETS:
            os.environ.pop(name, None)


@pytest.fixture(scope="session")
def tracking_server(s3_endpoint, tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, artifacts in the S3 bucket 'mlflow')."""
    import servers

    with servers.mlflow_server(tmp_path_factory.mktemp("mlflow"), "s3://mlflow/artifacts") as uri:
        yield uri


def short_temp_dir() -> Path:
    """A new folder for a Ray cluster's files, under /tmp: Ray's socket paths must fit in 107 bytes."""
    return Path(tempfile.mkdtemp(prefix="banray-ray-", dir="/tmp"))


@pytest.fixture(scope="session", autouse=True)
def ray_on_loopback():
    """Every cluster the tests start listens on loopback only, and Ray calls made here (the State API)
    reach one at 127.0.0.1 as given."""
    with ray_internals.loopback_as_given():
        yield


SESSION_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def torch_threads_as_the_session_started():
    """A trial trained in the tests' process (a test's or a module fixture's) sets torch's thread count to its
    CPUs (banray.training.loop); a test's float sums must not depend on which tests ran before it."""
    torch.set_num_threads(SESSION_THREADS)
    yield
    torch.set_num_threads(SESSION_THREADS)


@pytest.fixture(scope="session")
def ray_temp_dir() -> Path:
    """The session cluster's temp dir: its session folder holds every log Ray writes."""
    return short_temp_dir()


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint, ray_temp_dir):
    """A real local Ray cluster for the whole session; yields its GCS address."""
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(fakedata)  # workers cannot import the tests folder
    temp_dir = str(ray_temp_dir)
    with ray_internals.loopback_only():
        ray.init(
            num_cpus=2,
            _temp_dir=temp_dir,
            runtime_env={
                "env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_AIR_NEW_OUTPUT": "0"},
                "worker_process_setup_hook": fakedata.allow_unverified_cifar,
            },
        )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def run_python(script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`script` run by a fresh Python (nothing imported yet), its output captured as text."""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)


def one_error_line(stderr: str, *expected: str) -> str:
    """The one `error: ` line a refused command prints, holding each of `expected`."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]
