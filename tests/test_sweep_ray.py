"""End to end on a real local Ray cluster: Tune trial groups, Train workers, a generation chain, MLflow."""

import json
from pathlib import Path
import os
import shutil
import signal
import subprocess
import sys
import time

import mlflow
import pytest
import ray
import ray.tune as tune
import torch
import yaml
from ray.train import Checkpoint
from ray.util.state import list_actors

from banray.spec import parse_spec
from banray.sweep import start as sweep
from banray.sweep.runners import start_evaluations_runner
from banray.trial.trainable import trial_class
from conftest import REPO, short_temp_dir, tiny_spec
from servers import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(ray_cluster, tmp_path_factory):
    """1 chain × (teacher + 1 BAN generation + the control teacher′) × 2 trials × 2 epochs on synthetic data,
    the students reading their teacher's logits from the generation's cache."""
    storage = tmp_path_factory.mktemp("storage")
    spec = parse_spec(tiny_spec(storage=str(storage), control=True, **{"distill.teacher": "cached"}))
    lines = []
    result = sweep.run(spec, echo=lines.append)
    return spec, result, "\n".join(lines)


def generations(result):
    return result.report["chains"][0]["generations"]


def test_report_files_describe_every_generation(finished):
    spec, result, output = finished
    assert sorted(Path(f).name for f in result.files) == ["report.json", "report.md", "report.png"]
    report = json.loads((Path(result.sweep_dir) / "report.json").read_text())
    teacher, student = report["chains"][0]["generations"]
    assert [teacher["generation"], student["generation"]] == [0, 1]
    for record in (teacher, student):
        assert record["status"] == "finished"
        assert 0 <= record["val_error"] <= 1 and 0 <= record["test_error"] <= 1
        assert os.path.isdir(record["checkpoint"]) and record["mlflow_run_id"]
    assert teacher["teacher_checkpoint"] is None
    assert student["teacher_checkpoint"] == teacher["checkpoint"]
    assert report["columns"] == ["Teacher", "BAN-1", "Teacher′", "Teacher+Teacher′"]
    assert "| Chain | Teacher | BAN-1 | Teacher′ | Teacher+Teacher′ |" in output and "| mean ± std |" in output
    assert "Report: " in output and f"Open the MLflow UI: banray ui {result.sweep_dir}" in output
    # The table is the last thing a sweep prints.
    assert output.index("Open the MLflow UI") < output.index("| Chain |") and output.rstrip().endswith("|")


def test_control_arm_is_the_teachers_recipe_with_fresh_seeds(finished):
    _, result, output = finished
    chain = result.report["chains"][0]
    control, teacher = chain["arms"]["control"], chain["generations"][0]
    assert control["status"] == "finished" and control["role"] == "control" and control["generation"] == 0
    assert control["objective"] == teacher["objective"] == "ce" and control["teacher_checkpoint"] is None
    assert {t["seed"] for t in control["trials"]}.isdisjoint({t["seed"] for t in teacher["trials"]})
    assert Checkpoint(control["checkpoint"]).get_metadata()["arm"] == "control"
    (pair,) = chain["control_ensembles"]
    assert pair["members"] == [0, "control"] and 0 <= pair["test_error"] <= 1
    assert 0 <= control["test_ece"] <= 1 and 0 <= teacher["test_ece"] <= 1
    assert "Teacher′" in result.report["columns"] and "no claim" in output


def test_the_students_built_one_teacher_cache_in_the_sweep_folder(finished):
    _, result, _ = finished
    caches = list((Path(result.sweep_dir) / "teacher-cache").iterdir())
    # Synthetic data has no augmentation: one file serves every epoch; no claim is left behind.
    assert len(caches) == 1 and [p.name for p in caches[0].iterdir()] == ["epoch-all.pt"]


def test_a_group_runner_runs_its_calls_side_by_side_in_one_process(ray_cluster, tmp_path):
    release = tmp_path / "release"
    runner = start_evaluations_runner(calls_at_once=2)
    wait_for_release = ["sh", "-c", f"while [ ! -e {release} ]; do sleep 0.05; done"]
    blocked = runner.call.remote(subprocess.run, wait_for_release)  # holds one thread until released
    pid = ray.get(runner.call.remote(os.getpid))  # answered while the first call still runs
    assert ray.wait([blocked], timeout=0)[1] and ray.get(runner.call.remote(os.getpid)) == pid
    release.touch()
    ray.get(blocked)
    ray.kill(runner)  # asynchronous: a call sent at once may still be answered

    def answers() -> bool:
        try:
            return ray.get(runner.call.remote(os.getpid), timeout=10) == pid
        except ray.exceptions.RayActorError:
            return False

    wait_until(lambda: not answers(), 60, "the killed runner to answer no more")


def test_best_trial_is_selected_on_validation(finished):
    _, result, _ = finished
    for record in generations(result):
        assert len(record["trials"]) == 2
        best = min(record["trials"], key=lambda t: (t["val_error"], t["trial"]))
        assert record["best_trial"] == best["trial"] and record["checkpoint"] == best["checkpoint"]
        assert len({t["seed"] for t in record["trials"]}) == 2  # trials differ by seed


def test_generation_one_was_taught_by_generation_zeros_best_checkpoint(finished):
    spec, result, _ = finished
    teacher, student = generations(result)
    teacher_metadata = Checkpoint(teacher["checkpoint"]).get_metadata()
    assert teacher_metadata["generation"] == 0 and teacher_metadata["trial"] == teacher["best_trial"]
    assert teacher_metadata["spec_hash"] == spec.spec_hash()
    for trial in student["trials"]:
        metadata = Checkpoint(trial["checkpoint"]).get_metadata()
        assert metadata["generation"] == 1 and metadata["objective"] == "ban"
        assert metadata["teacher"] == {k: teacher_metadata[k] for k in metadata["teacher"]}
        assert metadata["teacher"]["trial"] == teacher["best_trial"]
        assert metadata["teacher"]["epoch"] == teacher["best_epoch"]


def test_mlflow_holds_generation_runs_with_trial_children(finished):
    spec, result, _ = finished
    uri = result.report["mlflow"]["tracking_uri"]
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(spec.name)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"chain0", "chain0-gen0", "chain0-gen1", "chain0-control", "chain0-control-gen0",
                         "chain0-ensembles", "summary"} | {
        f"chain0-{group}-trial{t}" for group in ("gen0", "gen1", "control-gen0") for t in (0, 1)
    }
    teacher, student = generations(result)
    for generation, record in enumerate((teacher, student)):
        parent = runs[f"chain0-gen{generation}"]
        assert parent.info.run_id == record["mlflow_run_id"]
        assert parent.data.tags["banray.sweep"] == spec.name
        assert parent.data.tags["banray.chain"] == "0"
        assert parent.data.tags["banray.generation"] == str(generation)
        assert parent.data.metrics["test_error"] == pytest.approx(record["test_error"])
        for t in (0, 1):
            child = runs[f"chain0-gen{generation}-trial{t}"]
            assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert child.data.params["distill.objective"] == ("ce" if generation == 0 else "ban")
            assert child.data.params["train.epochs"] == "2"
            history = client.get_metric_history(child.info.run_id, "val_error")
            assert [m.step for m in history] == [1, 2]
    assert runs["chain0-gen0"].data.tags["banray.teacher_run_id"] == ""
    assert runs["chain0-gen1"].data.tags["banray.teacher_run_id"] == teacher["mlflow_run_id"]
    assert runs["chain0-control-gen0"].data.tags["banray.role"] == "control"
    summary = runs["summary"].data.metrics
    # The summary run's headline numbers, in points (one chain: means, no interval); the rest in paired.json.
    assert summary["vs_teacher.ban1.test_error_pct.mean"] == pytest.approx(
        100 * (student["test_error"] - teacher["test_error"]))
    assert summary["vs_teacher.ban1.test_error_pct.n"] == 1
    assert "vs_teacher.control.test_error_pct.mean" in summary and len(summary) <= 20
    summary_files = {a.path for a in client.list_artifacts(runs["summary"].info.run_id)}
    assert summary_files == {"report.json", "report.md", "report.png", "spec.yaml", "paired.json"}


def test_each_generation_logs_a_loadable_model(finished, monkeypatch):
    _, result, _ = finished
    monkeypatch.setenv("MLFLOW_TRACKING_URI", result.report["mlflow"]["tracking_uri"])
    x = torch.zeros(2, 1, 8, 8)
    for record in generations(result):
        model = mlflow.pytorch.load_model(record["model_uri"])
        assert isinstance(model, torch.nn.Module)
        assert model(x).shape == (2, 4)


# What a sweep's output must not hold: Ray Train's notice per trial about its preemption watcher, Ray's
# hint about many worker processes, MLflow's INFO lines and registry chatter, colour codes off a terminal,
# any library's warnings (Tune's about the per-trial files banray turns off).
NOISE = ("PreemptionWatcher", "PYTHON worker processes have been started", "INFO mlflow", "already exists",
         "Token authentication is enabled", "\x1b[", "WARNING", "Traceback", "SystemExit")


def test_cli_sweep_on_the_local_cluster_it_starts(tmp_path):
    """No --address: the quickstart's path. One chain's groups, their trials on warm hosts, each Tune run's
    trial process stopped by Ray at its end: banray's lines and the table, nothing else; Ray's dashboard
    not started (trials on hosts never use it; its log says whether it served)."""
    spec = tiny_spec(name="local", storage=str(tmp_path / "runs"), train={"epochs": 1, "batch_size": 64},
                     resources={"cpus_per_worker": 1})
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(spec))
    ray_tmp = short_temp_dir()
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    try:
        completed = subprocess.run([sys.executable, "-m", "banray", "sweep", str(path)], capture_output=True,
                                   text=True, timeout=600, cwd=REPO, env={**environment, "RAY_TMPDIR": str(ray_tmp)})
        assert completed.returncode == 0, completed.stderr[-3000:]
        output = completed.stdout + completed.stderr
        assert not [word for word in NOISE if word in output], output[-3000:]
        assert completed.stdout.rstrip().splitlines()[-1].startswith("|")
        dashboard_log = next(ray_tmp.glob("ray/session_*/logs/dashboard.log")).read_text()
        assert "http server disabled" in dashboard_log  # Ray 2.60's line for a cluster without the dashboard
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_trial_process_ends_at_once_on_sigterm(ray_cluster, tmp_path):
    """Ray's own SIGTERM handler raises SystemExit, printed as a traceback when it lands in a callback of
    the exiting trial process; a banray trial's process has the default action instead."""
    def report_handler(config):
        tune.report({"default_action": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL})

    grid = tune.Tuner(trial_class(report_handler), run_config=tune.RunConfig(storage_path=str(tmp_path))).fit()
    assert grid[0].metrics["default_action"] is True


def test_cli_sweep_on_digits_against_a_running_cluster(ray_cluster, tmp_path):
    """On TorchTrainer (whose preemption watcher Ray reports per trial), with a control arm and two
    generations registered into one model: banray's lines and the table last, nothing else."""
    spec = tiny_spec(name="cli", storage=str(tmp_path / "runs"), generations=2, control=True,
                     data={"dataset": "digits"}, train={"epochs": 1, "batch_size": 64},
                     search={"trials": 1}, resources={"trainer": "train"})
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(spec))
    completed = subprocess.run(
        [sys.executable, "-m", "banray", "sweep", str(path), "--address", ray_cluster],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "| Chain | Teacher | BAN-1 |" in completed.stdout
    output = completed.stdout + completed.stderr
    assert not [word for word in NOISE if word in output], output[-3000:]
    assert completed.stdout.rstrip().splitlines()[-1].startswith("|")  # the table is the last thing printed
    report = json.loads((tmp_path / "runs" / "cli" / "report.json").read_text())
    assert [g["status"] for g in report["chains"][0]["generations"]] == ["finished"] * 3


def trial_hosts(address: str) -> int:
    """How many warm trial processes (banray.trial.hosts) the cluster has started so far."""
    return len(list_actors(address=address, filters=[("class_name", "=", "TrialHost")], limit=10_000))


@pytest.mark.parametrize(
    "resources, engine, hosts",
    [({"workers_per_trial": 2}, "train", False), ({"trainer": "train"}, "train", False), ({}, "trial", True),
     ({"warm_processes": False}, "trial", False)],
    ids=["two-workers-on-TorchTrainer", "one-worker-on-TorchTrainer", "one-worker-on-a-warm-host",
         "one-worker-in-its-trial-process"],
)
def test_both_engines_train_a_chain(ray_cluster, tmp_path, resources, engine, hosts):
    """Data-parallel trials (and trainer: train) keep Ray Train's TorchTrainer, whose runs live under train/;
    one-worker trials are driven by their Tune trial, whose checkpoints Tune keeps under tune/, and train in
    the sweep's warm processes: one per worker slot for the whole sweep, not one per group."""
    spec = parse_spec(tiny_spec(storage=str(tmp_path), search={"trials": 1}, resources=resources))
    assert spec.resources.engine() == engine and spec.resources.on_host() == hosts
    hosts_before = trial_hosts(ray_cluster)
    result = sweep.run(spec, echo=lambda line: None)
    started = trial_hosts(ray_cluster) - hosts_before
    assert started == (int(ray.cluster_resources()["CPU"]) if hosts else 0)
    teacher, student = generations(result)
    assert [teacher["status"], student["status"]] == ["finished", "finished"]
    assert student["teacher_checkpoint"] == teacher["checkpoint"]
    folder = Path(result.sweep_dir)
    for record in (teacher, student):
        where = Path(record["checkpoint"]).relative_to(folder).parts[0]
        assert where == ("train" if engine == "train" else "tune"), record["checkpoint"]
        metadata = Checkpoint(record["checkpoint"]).get_metadata()
        assert metadata["epoch"] == record["best_epoch"] and metadata["val_error"] == record["val_error"]
    train_runs = list((folder / "train").glob("*")) if (folder / "train").exists() else []
    assert (len(train_runs) == 2) == (engine == "train")  # one Train run per trial, or none


def test_an_ensemble_taught_generation_learns_from_every_earlier_one(ray_cluster, tmp_path):
    """distill.teacher_from: ensemble on digits, cached: generation 2 learns from generations 0 and 1; its record,
    its checkpoints, its MLflow run and the report name both members."""
    spec = parse_spec(tiny_spec(storage=str(tmp_path), generations=2, data={"dataset": "digits"},
                                train={"epochs": 1, "batch_size": 64}, search={"trials": 1},
                                distill={"objective": "ban", "teacher_from": "ensemble", "teacher": "cached"}))
    lines = []
    result = sweep.run(spec, echo=lines.append)
    teacher, first, second = generations(result)
    assert [g["status"] for g in (teacher, first, second)] == ["finished"] * 3
    assert first["teacher_checkpoints"] == [teacher["checkpoint"]] == [first["teacher_checkpoint"]]
    assert second["teacher_checkpoints"] == [teacher["checkpoint"], first["checkpoint"]]
    assert second["teacher_checkpoint"] == first["checkpoint"]  # still generation k − 1's, as with 'previous'
    assert second["teacher_run_ids"] == [teacher["mlflow_run_id"], first["mlflow_run_id"]]
    metadata = Checkpoint(second["checkpoint"]).get_metadata()
    assert [(m["generation"], m["trial"], m["epoch"]) for m in metadata["teachers"]] == [
        (g["generation"], g["best_trial"], g["best_epoch"]) for g in (teacher, first)]
    # Generation 1's ensemble is generation 0 alone, generation 2's both: two caches, keyed apart.
    assert len(list((Path(result.sweep_dir) / "teacher-cache").iterdir())) == 2
    run = mlflow.MlflowClient(result.report["mlflow"]["tracking_uri"]).get_run(second["mlflow_run_id"])
    note = run.data.tags["mlflow.note.content"]
    assert "distilled from an ensemble teacher: the average of the softmax outputs of [chain0-gen0](" in note
    assert teacher["mlflow_run_id"] in note and first["mlflow_run_id"] in note
    assert run.data.params["distill.teacher_from"] == "ensemble"
    assert result.report["teacher_from"] == "ensemble"
    assert "Each BAN-k learned from the ensemble teacher of its chain's generations 0 … k−1" in "\n".join(lines)


def test_tune_writes_no_files_per_result(finished):
    """Tune's default loggers write result.json, progress.csv and TensorBoard events after every report,
    while the trial waits for the controller; banray's metrics go to MLflow, so they are off."""
    spec, result, output = finished
    trial_folders = [p for p in (Path(result.sweep_dir) / "tune").glob("*/trial_*") if p.is_dir()]
    assert trial_folders
    written = {f.name for folder in trial_folders for f in folder.iterdir()}
    assert not written & {"result.json", "progress.csv"} and not any(n.startswith("events.out") for n in written)


def test_holders_on_one_node_get_hosts_of_their_own_and_a_released_host_serves_again(ray_cluster):
    from banray.trial.hosts import start_host
    from banray.trial.slots import WorkerSlots

    slots = WorkerSlots.remote(2, start_host)
    node = ray.get_runtime_context().get_node_id()
    for holder in ("a", "b"):
        ray.get(slots.acquire.remote(holder))
    a, b = (ray.get(slots.host.remote(holder, node)) for holder in ("a", "b"))
    assert a._actor_id != b._actor_id
    ray.get(slots.release.remote("a"))
    ray.get(slots.acquire.remote("c"))
    c = ray.get(slots.host.remote("c", node))
    assert c._actor_id == a._actor_id  # the host "a" left, warm
    assert ray.get(c.cancel.remote()) is None  # a live host, nothing started on it yet
    ray.kill(slots)
