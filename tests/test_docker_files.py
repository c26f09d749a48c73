"""No Docker engine runs here: check that docker/ agrees with pyproject (Ray and Python versions, the
entry point, the sweep file it runs)."""

import re
import tomllib

import yaml

from conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
RAY_VERSION = next(re.search(r"==([\d.]+)", d).group(1) for d in PYPROJECT["project"]["dependencies"] if d.startswith("ray["))
PYTHON = re.search(r"(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"]).groups()


def test_dockerfile_uses_the_ray_image_of_the_pinned_versions():
    text = (REPO / "docker" / "Dockerfile").read_text()
    (image,) = re.findall(r"ARG RAY_IMAGE=(\S+)", text)
    assert image == f"rayproject/ray:{RAY_VERSION}-py{''.join(PYTHON)}"
    assert "FROM ${RAY_IMAGE}" in text
    assert "pip install --no-cache-dir -c constraints.txt ." in text  # the same torch build as `make`
    for copied in ("pyproject.toml", "constraints.txt", "banray", "sweeps"):
        assert copied in text


def test_compose_cluster_has_its_services_and_builds_this_image():
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"ray-head", "ray-worker", "mlflow", "postgres", "minio"} <= set(services)
    assert services["ray-head"]["build"]["dockerfile"] == "docker/Dockerfile"
    assert services["ray-worker"]["image"] == services["ray-head"]["image"]
    assert "ray-head:6379" in services["ray-worker"]["command"]
    assert "postgresql://" in services["mlflow"]["command"] and "s3://" in services["mlflow"]["command"]
    for name in ("ray-head", "ray-worker"):
        env = services[name]["environment"]
        assert env["AWS_ENDPOINT_URL_S3"] == "http://minio:9000" and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_rayjob_runs_the_cifar100_sweep_with_the_entry_point():
    job = yaml.safe_load((REPO / "docker" / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob"
    entrypoint = job["spec"]["entrypoint"].split()
    (script,) = PYPROJECT["project"]["scripts"]
    assert entrypoint[:3] == [script, "sweep", "sweeps/cifar100.yaml"]
    assert (REPO / entrypoint[2]).is_file()
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == RAY_VERSION


def test_runtime_env_keeps_the_upload_small():
    runtime_env = yaml.safe_load((REPO / "runtime_env.yaml").read_text())
    assert runtime_env["working_dir"] == "."
    assert {".git/", ".venv/", "runs/"} <= set(runtime_env["excludes"])
