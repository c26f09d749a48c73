"""Fault tests on a real local Ray cluster: a killed driver, a killed training worker, an S3 outage and a
diverging learning rate. Each asserts what the sweep made of it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import mlflow
import pytest
import ray
import yaml
from ray.util.state import list_actors

from banray.spec import parse_spec
from banray.sweep import start as sweep
from conftest import REPO, tiny_spec
from servers import free_port, wait_until

pytestmark = pytest.mark.slow


def start_driver(spec: dict, folder: Path, address: str, *extra: str, env: dict | None = None):
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    log = open(folder / f"{spec['name']}-{len(list(folder.glob('*.log')))}.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "banray", "sweep", str(path), "--address", address, *extra],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(env or {})}, start_new_session=True,
    )
    return process, Path(log.name)


def finish(process: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    process.wait(timeout)
    output = log.read_text()
    assert process.returncode == 0, output[-4000:]
    return output


def runs_by_generation(tracking_uri: str, experiment: str) -> dict[str, dict[str, list]]:
    """generation → {"generation": its generation runs, "trials": its trial runs}."""
    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    grouped: dict[str, dict[str, list]] = {}
    for run in client.search_runs([found.experiment_id], max_results=1000):
        tags = run.data.tags
        if "banray.generation" not in tags or tags.get("banray.role") == "ensemble":
            continue
        kind = "trials" if tags.get("banray.trial") else "generation"
        grouped.setdefault(tags["banray.generation"], {"generation": [], "trials": []})[kind].append(run)
    return grouped


# Both engines of a trial (resources.trainer): Ray Train's TorchTrainer, and a warm host the Tune trial drives.
ENGINES = pytest.mark.parametrize("engine", ["train", "trial"])


def train_runs(sweep_dir: Path, chain: int, generation: int, engine: str = "train") -> list[Path]:
    """The storage folders of one generation's trials: Ray Train runs (named after the Tune run and trial),
    or the Tune trial folders that hold a trial's checkpoints when it trains in its own process."""
    if engine == "train":
        return sorted((sweep_dir / "train").glob(f"chain{chain}-gen{generation}-*"))
    return sorted((sweep_dir / "tune" / f"chain{chain}-gen{generation}").glob("trial_*"))


def has_checkpoint(run_dirs: list[Path], engine: str = "train", saved_state: bool = False) -> bool:
    """Whether one of these trials has a checkpoint recorded: Ray Train's snapshot names it; in Tune, a
    second one is stored (so the trial has reported the first) and, with `saved_state`, Tune's newest saved
    experiment state names one of them: a restore after a killed driver starts from what that state names.
    A state can hold a trial's result before its checkpoint: Tune takes a reported checkpoint with a second
    call to the trial (its save), after the result, and may save its state in between."""
    if engine == "train":
        return any((run / "checkpoint_manager_snapshot.json").exists() for run in run_dirs)
    stored = [c for run in run_dirs for c in run.glob("checkpoint_*/model.pt")]
    return len(stored) >= 2 and (not saved_state or saved_state_names_a_checkpoint(run_dirs[0].parent))


def saved_state_names_a_checkpoint(tune_run: Path) -> bool:
    """Whether a trial's checkpoint manager in Tune's newest saved state holds a checkpoint: it is saved as a
    cloudpickle in hex, which names the checkpoint's folder (read as bytes here, not unpickled)."""
    states = sorted(tune_run.glob("experiment_state*.json"))
    try:
        trials = json.loads(states[-1].read_text())["trial_data"] if states else []
    except json.JSONDecodeError:  # read while it was being written
        return False
    managers = [json.loads(metadata)["checkpoint_manager"]["value"] for _, metadata in trials]
    return any(b"/checkpoint_0" in bytes.fromhex(manager) for manager in managers)


@pytest.fixture
def no_leaked_placement_groups(ray_cluster):
    """Ray Train V2 can leave the placement group of a worker group behind when its driver is SIGKILLed as
    the group starts, before the controller's PlacementGroupCleaner runs: its job is dead, so nothing would
    ever free it, and a later test that needs the whole cluster would wait for it forever. Removed here."""
    yield
    from ray.util.placement_group import PlacementGroup
    from ray.util.state import list_placement_groups

    dead_jobs = {job["JobID"] for job in ray._private.state.jobs() if job["IsDead"]}
    for group in list_placement_groups(address=ray_cluster, filters=[("state", "=", "CREATED")], detail=True):
        if group.creator_job_id in dead_jobs and not group.is_detached:
            ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group.placement_group_id)))


def chain_state(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "state.json").read_text())["chains"]["0"]


def generation_one_started(sweep_dir: Path, engine: str) -> bool:
    """Generation 1's group runs, before its trials have reported anything: no trial has a folder yet."""
    running = chain_state(sweep_dir)["running"]
    return running is not None and running["generation"] == 1


def generation_one_checkpointed(sweep_dir: Path, engine: str) -> bool:
    """Generation 1's group runs and Tune's saved state names one of its trials' checkpoints."""
    return generation_one_started(sweep_dir, engine) and has_checkpoint(
        train_runs(sweep_dir, 0, 1, engine), engine, saved_state=True)


def generation_one_reported(sweep_dir: Path, engine: str) -> bool:
    """Generation 1's trials have reported, with or without a checkpoint Tune's saved state names yet."""
    return generation_one_started(sweep_dir, engine) and has_checkpoint(train_runs(sweep_dir, 0, 1, engine), engine)


def generation_one_finished(sweep_dir: Path, engine: str) -> bool:
    """Generation 1's group has ended (its record is in the sweep state); generation 2's may be starting."""
    return [g["generation"] for g in chain_state(sweep_dir)["generations"]] == [0, 1]


# Where the driver is killed: as generation 1's group starts, once its trials report (Tune may hold a result
# and not yet its checkpoint), once Tune's saved state names a checkpoint, and as generation 2's group starts.
KILL_POINTS = {
    "group-start": generation_one_started,
    "first-reports": generation_one_reported,
    "checkpoint-saved": generation_one_checkpointed,
    "group-end": generation_one_finished,
}


# Every kill point on warm hosts; on Ray Train (2-3 minutes a case) the two inside a group's training.
@pytest.mark.parametrize("engine, kill_point", [("trial", point) for point in KILL_POINTS] +
                         [("train", "first-reports"), ("train", "checkpoint-saved")])
@pytest.mark.usefixtures("no_leaked_placement_groups")
def test_killed_driver_resumes_without_rerunning_trials(ray_cluster, tmp_path, engine, kill_point):
    spec = tiny_spec(name="killed", storage=str(tmp_path / "runs"), generations=2,
                     train={"epochs": 20, "lr": 0.05, "checkpoint_every_s": 0}, search={"trials": 2},
                     resources={"trainer": engine})
    sweep_dir = tmp_path / "runs" / "killed"
    driver, log = start_driver(spec, tmp_path, ray_cluster)
    wait_until(lambda: KILL_POINTS[kill_point](sweep_dir, engine), 300, f"the kill point {kill_point}")
    driver.send_signal(signal.SIGKILL)
    driver.wait(30)
    killed_at = time.time() * 1000
    finished_before = [g["generation"] for g in chain_state(sweep_dir)["generations"]]
    assert not json.loads((sweep_dir / "state.json").read_text())["finished"] and finished_before in ([0], [0, 1])

    resumed, log = start_driver(spec, tmp_path, ray_cluster, "--resume")
    output = finish(resumed, log)
    assert f"chain 0: {len(finished_before)} generation(s) finished before; they are not retrained" in output

    report = json.loads((sweep_dir / "report.json").read_text())
    records = report["chains"][0]["generations"]
    assert [(r["generation"], r["status"]) for r in records] == [(0, "finished"), (1, "finished"), (2, "finished")]
    assert json.loads((sweep_dir / "state.json").read_text())["finished"]
    # Counted in storage: one Train run (or Tune trial folder) per trial, none started twice.
    for generation in (0, 1, 2):
        assert len(train_runs(sweep_dir, 0, generation, engine)) == 2
    # Counted in MLflow: one run per generation and one per trial, generation 0's all from before the kill.
    runs = runs_by_generation(report["mlflow"]["tracking_uri"], "killed")
    client = mlflow.MlflowClient(report["mlflow"]["tracking_uri"])
    for generation in ("0", "1", "2"):
        assert len(runs[generation]["generation"]) == 1
        for trial in runs[generation]["trials"]:  # every epoch logged, once
            steps = [m.step for m in client.get_metric_history(trial.info.run_id, "val_error")]
            assert sorted(steps) == list(range(1, 21))
        trial_ids = [r.data.tags["banray.tune_trial_id"] for r in runs[generation]["trials"]]
        assert len(trial_ids) == 2 == len(set(trial_ids))
        assert all(r.info.status == "FINISHED" for r in runs[generation]["trials"] + runs[generation]["generation"])
    assert all(r.info.start_time < killed_at for r in runs["0"]["trials"])
    assert runs["1"]["generation"][0].info.start_time < killed_at
    if kill_point == "checkpoint-saved":
        assert "chain 0 generation 1: continuing its interrupted Tune run" in output
        # The interrupted trial went on from its last checkpoint rather than from scratch.
        resumed_after = [r.data.metrics.get("resumed_after_epoch") for r in runs["1"]["trials"]]
        assert any(epoch is not None and epoch >= 1 for epoch in resumed_after), resumed_after


@ENGINES
@pytest.mark.usefixtures("no_leaked_placement_groups")
def test_a_group_whose_tune_state_is_lost_starts_its_trials_from_their_own_checkpoints(ray_cluster, tmp_path, engine):
    """The driver is killed while generation 1 trains and its Tune state is lost (as a state cut short or
    never saved is): the resumed group starts its trials again with their searched settings, each from its
    own last checkpoint, and says so; each trial keeps one MLflow run with every epoch logged once."""
    spec = tiny_spec(name="state-lost", storage=str(tmp_path / "runs"), generations=1,
                     train={"epochs": 20, "lr": {"uniform": [0.03, 0.06]}, "checkpoint_every_s": 0},
                     search={"trials": 2}, resources={"trainer": engine})
    sweep_dir = tmp_path / "runs" / "state-lost"
    driver, log = start_driver(spec, tmp_path, ray_cluster)
    wait_until(lambda: generation_one_reported(sweep_dir, engine), 300, "generation 1's first checkpoint")
    driver.send_signal(signal.SIGKILL)
    driver.wait(30)
    for state in (sweep_dir / "tune" / "chain0-gen1").glob("experiment_state-*.json"):
        state.unlink()
    runs_before = runs_by_generation(f"sqlite:///{sweep_dir / 'mlflow.db'}", "state-lost")["1"]["trials"]
    lr_before = {r.data.tags["banray.trial"]: r.data.params["train.lr"] for r in runs_before}

    resumed, log = start_driver(spec, tmp_path, ray_cluster, "--resume")
    output = finish(resumed, log)
    assert "chain 0 generation 1: its interrupted Tune run" in output and "left no whole state" in output
    assert "each from its own last checkpoint where it has one (trial " in output, output[-3000:]

    report = json.loads((sweep_dir / "report.json").read_text())
    assert [g["status"] for g in report["chains"][0]["generations"]] == ["finished", "finished"]
    client = mlflow.MlflowClient(report["mlflow"]["tracking_uri"])
    trial_runs = runs_by_generation(report["mlflow"]["tracking_uri"], "state-lost")["1"]["trials"]
    assert sorted(r.data.tags["banray.trial"] for r in trial_runs) == ["0", "1"]
    for run in trial_runs:
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_error")) == list(range(1, 21))
        assert run.info.status == "FINISHED"
        if run.data.tags["banray.trial"] in lr_before:  # started before the kill: the same searched settings
            assert run.data.params["train.lr"] == lr_before[run.data.tags["banray.trial"]]
    resumed_after = [r.data.metrics.get("resumed_after_epoch") for r in trial_runs]
    assert any(epoch is not None and epoch >= 1 for epoch in resumed_after), resumed_after


@pytest.mark.parametrize("engine, killed", [("train", "RayTrainWorker"), ("trial", "TrialHost"),
                                            ("trial", "drive_host")],  # its Tune class is named after it
                         ids=["Train-worker", "warm-host", "Tune-trial-driving-a-host"])
@pytest.mark.usefixtures("no_leaked_placement_groups")
def test_killed_training_worker_resumes_from_its_checkpoint(ray_cluster, tmp_path, engine, killed):
    """A killed process that trains (a Ray Train worker, a warm host) or drives the training (the Tune
    trial on a host, whose host must then give up what it trained for it): the trial goes on from its last
    checkpoint. A trial of both CPUs makes one slot, so the cluster's one host is the one that trains."""
    resources = {"trainer": engine, **({"cpus_per_worker": 2} if engine == "trial" else {})}
    spec = tiny_spec(name="worker-lost", storage=str(tmp_path / "runs"),
                     train={"epochs": 20, "lr": 0.05, "checkpoint_every_s": 0}, search={"trials": 1},
                     resources=resources)
    sweep_dir = tmp_path / "runs" / "worker-lost"
    driver, log = start_driver(spec, tmp_path, ray_cluster)

    def training_worker_pid() -> int | None:
        if not has_checkpoint(train_runs(sweep_dir, 0, 0, engine), engine):
            return None
        workers = list_actors(address=ray_cluster, filters=[("class_name", "=", killed), ("state", "=", "ALIVE")])
        return workers[0].pid if workers else None

    wait_until(lambda: training_worker_pid() is not None, 300, "the teacher's first checkpoint")
    pid = training_worker_pid()
    if killed == "drive_host":  # the Tune trial that drives a host keeps its process light
        assert "libtorch" not in Path(f"/proc/{pid}/maps").read_text()
    os.kill(pid, signal.SIGKILL)
    output = finish(driver, log)

    report = json.loads((sweep_dir / "report.json").read_text())
    teacher = report["chains"][0]["generations"][0]
    assert teacher["status"] == "finished" and teacher["trials"][0]["status"] == "finished"
    client = mlflow.MlflowClient(report["mlflow"]["tracking_uri"])
    (trial_run,) = runs_by_generation(report["mlflow"]["tracking_uri"], "worker-lost")["0"]["trials"]
    resumed_after = trial_run.data.metrics.get("resumed_after_epoch")
    assert resumed_after is not None and 1 <= resumed_after < 20, output[-3000:]
    # The restarted worker went on after its checkpoint: every epoch logged, once (the epochs it ran again
    # after the checkpoint it restarted from were logged before it died).
    steps = [m.step for m in client.get_metric_history(trial_run.info.run_id, "val_error")]
    assert sorted(steps) == list(range(1, 21))


class RestartableS3:
    """A second moto server on its own port, over the same in-process store as the session's: it can be
    stopped and started again with nothing lost, while the MLflow server keeps using the session's."""

    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server = None

    def start(self):
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self):
        self.server.stop()


@ENGINES
def test_sweep_survives_an_s3_outage(ray_cluster, s3_endpoint, tracking_server, tmp_path, engine):
    s3 = RestartableS3()
    s3.start()
    prefix = f"outage-{os.getpid()}-{engine}"
    spec = tiny_spec(name="outage", storage=f"s3://banray/{prefix}", storage_endpoint=s3.endpoint,
                     tracking={"uri": tracking_server, "experiment": prefix},
                     train={"epochs": 10, "lr": 0.05, "checkpoint_every_s": 0}, search={"trials": 1},
                     resources={"trainer": engine})
    bucket = boto3.client("s3")  # through the session's server: same objects, never stopped

    def stored(suffix: str) -> list[str]:
        pages = bucket.get_paginator("list_objects_v2").paginate(Bucket="banray", Prefix=f"{prefix}/outage/")
        return [o["Key"] for page in pages for o in page.get("Contents", []) if o["Key"].endswith(suffix)]

    driver, log = start_driver(spec, tmp_path, ray_cluster, env={"AWS_ENDPOINT_URL_S3": s3.endpoint})
    try:
        wait_until(lambda: len(stored("/model.pt")) >= 1, 300, "the teacher's first checkpoint in S3")
        s3.stop()
        time.sleep(10)
    finally:
        s3.start()
    output = finish(driver, log)

    report = json.loads(bucket.get_object(Bucket="banray", Key=f"{prefix}/outage/report.json")["Body"].read())
    records = report["chains"][0]["generations"]
    assert [r["status"] for r in records] == ["finished", "finished"], output[-3000:]
    for record in records:  # nothing lost: every selected checkpoint is complete in S3
        key = record["checkpoint"].removeprefix("s3://banray/")
        assert f"{key}/model.pt" in stored("/model.pt")
    state = json.loads(bucket.get_object(Bucket="banray", Key=f"{prefix}/outage/state.json")["Body"].read())
    assert state["finished"]
    runs = runs_by_generation(tracking_server, prefix)
    steps = [m.step for m in mlflow.MlflowClient(tracking_server).get_metric_history(
        runs["0"]["trials"][0].info.run_id, "val_error")]
    assert sorted(set(steps)) == list(range(1, 11))


def test_diverging_trial_fails_with_its_reason_and_the_sweep_goes_on(ray_cluster, tmp_path):
    spec = parse_spec(tiny_spec(name="diverge", storage=str(tmp_path / "runs"), seed=3,
                                train={"epochs": 2, "lr": {"choice": [0.05, 1.0e12]}}, search={"trials": 4}))
    result = sweep.run(spec, echo=lambda line: None)
    teacher, student = result.report["chains"][0]["generations"]
    assert teacher["status"] == student["status"] == "finished"
    failed = [t for t in teacher["trials"] + student["trials"] if t["status"] == "failed"]
    finished = [t for t in teacher["trials"] + student["trials"] if t["status"] == "finished"]
    assert failed and finished, (teacher["trials"], student["trials"])
    for trial in failed:
        assert trial["settings"]["train.lr"] == 1.0e12
        assert "diverged: training loss not finite in epoch" in trial["reason"]
    assert all(t["settings"]["train.lr"] == 0.05 for t in finished)
    runs = runs_by_generation(result.report["mlflow"]["tracking_uri"], "diverge")
    failed_runs = [r for g in runs.values() for r in g["trials"] if r.info.status == "FAILED"]
    assert len(failed_runs) == len(failed)
    assert all(r.data.tags["banray.failure"].startswith("diverged:") for r in failed_runs)


def test_generation_without_a_finished_trial_stops_its_chain(ray_cluster, tmp_path):
    spec = parse_spec(tiny_spec(name="all-diverge", storage=str(tmp_path / "runs"), generations=2,
                                train={"epochs": 2, "lr": 1.0e12}, search={"trials": 1}))
    lines: list[str] = []
    result = sweep.run(spec, echo=lines.append)
    chain = result.report["chains"][0]
    assert [g["status"] for g in chain["generations"]] == ["failed"]
    assert "no trial of generation 0 finished" in chain["stopped"]
    assert "diverged" in chain["generations"][0]["message"]
    output = "\n".join(lines)
    assert "chain 0 stopped after generation 0" in output
    assert "stopped" in (Path(result.sweep_dir) / "report.md").read_text()
