"""The commands that look at sweeps — `status`, `ls`, `report`, `ui`, `promote` finding a sweep's store — on real
sweeps: a finished one, one whose driver is running (then killed), and copies of them in moto's S3; `validate`
with several files; `plan`'s data and cluster checks. Bad input is one line on stderr, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import requests
import yaml
from click.testing import CliRunner

import fakedata
from banray.commands.cli import cli
from banray.commands.inspection import duration
from banray.spec import parse_spec
from banray.sweep import start as sweep
from conftest import one_error_line, tiny_spec
from servers import free_port, wait_until
from test_faults import start_driver


def invoke(*args, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def contents(folder: Path) -> list[tuple[str, int]]:
    """Every path below `folder` with its modification time: what a command that only looks must not change."""
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def write_spec(folder: Path, file: str = "spec.yaml", **overrides) -> Path:
    path = folder / file
    path.write_text(yaml.safe_dump({"storage": str(folder / "runs"), **tiny_spec(**overrides)}))
    return path


def pct(value: float) -> str:
    return f"{100 * value:.2f}%"


# --- validate -----------------------------------------------------------------------------------------------


def test_validate_checks_every_file_and_fails_if_any_is_bad(tmp_path):
    good = write_spec(tmp_path, "good.yaml")
    other = write_spec(tmp_path, "other.yaml", name="other", chains=3)
    bad = write_spec(tmp_path, "bad.yaml", **{"train.epochs": 0})
    missing = tmp_path / "missing.yaml"
    result = invoke("validate", good, bad, missing, other)
    assert result.exit_code == 2, result.output
    out = result.stdout.splitlines()
    assert [line.split(":")[0] for line in out] == [str(good), str(other)]
    assert "valid. Sweep 'other' on synthetic: 3 chain(s)" in out[1]
    assert result.stderr.splitlines() == [
        f"error: {bad}: train.epochs: 0 is not allowed: input should be greater than or equal to 1",
        f"error: {missing}: cannot read the spec: No such file or directory",
    ]
    assert invoke("validate", good, other).exit_code == 0
    assert "Missing argument 'SPEC...'" in invoke("validate").output


# --- plan: the dataset and the cluster ----------------------------------------------------------------------


def plan_spec(tmp_path: Path, data: dict, **overrides) -> Path:
    return write_spec(tmp_path, data=data, **overrides)


def test_plan_names_the_missing_cifar_file_and_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = fakedata.write_cifar10(tmp_path / "data")
    (folder / "data_batch_3").unlink()
    path = plan_spec(tmp_path, {"dataset": "cifar10", "root": str(tmp_path / "data")})
    before = contents(tmp_path)
    result = invoke("plan", path)
    assert result.exit_code == 1, result.output
    one_error_line(result.stderr, f"data.root: cifar10 is not in {tmp_path / 'data'}: {folder} lacks data_batch_3;",
                   "set data.download: true", "put the extracted 'cifar-10-batches-py' folder")
    assert "DAG: 1 chain(s)" in result.stdout  # what it would run is still shown
    assert contents(tmp_path) == before

    (tmp_path / "data" / "cifar-10-python.tar.gz").write_bytes(b"not extracted")
    result = invoke("plan", path)
    one_error_line(result.stderr, "the archive cifar-10-python.tar.gz is there: extract it")

    fakedata.write_cifar10(tmp_path / "data")
    result = invoke("plan", path)
    assert result.exit_code == 0, result.output
    assert f"Data: cifar10: the 7 files of 'cifar-10-batches-py' are in {tmp_path / 'data'} (MD5 sums checked)" \
        in result.stdout.splitlines()


def test_plan_without_the_cifar_folder_says_so(tmp_path):
    path = plan_spec(tmp_path, {"dataset": "cifar100", "root": str(tmp_path / "nowhere")})
    result = invoke("plan", path)
    assert result.exit_code == 1, result.output
    one_error_line(result.stderr, f"there is no folder {tmp_path / 'nowhere' / 'cifar-100-python'}")


def test_plan_names_the_missing_ptb_file(tmp_path):
    fakedata.write_ptb(tmp_path / "ptb")
    (tmp_path / "ptb" / "ptb.valid.txt").unlink()
    (tmp_path / "ptb" / "ptb.test.txt").write_text("")
    path = plan_spec(tmp_path, {"dataset": "ptb", "root": str(tmp_path / "ptb")}, model={"arch": "lstm_lm"},
                     search={"metric": "val_nll"})
    result = invoke("plan", path)
    assert result.exit_code == 1, result.output
    one_error_line(result.stderr, f"data.root: ptb reads ptb.train.txt, ptb.valid.txt, ptb.test.txt in {tmp_path / 'ptb'}: "
                   "ptb.valid.txt not found, ptb.test.txt is empty;", "cannot be downloaded")


def test_plan_of_a_dataset_that_needs_no_files(tmp_path):
    result = invoke("plan", write_spec(tmp_path))
    assert result.exit_code == 0, result.output
    assert "Data: synthetic needs no files (it ships with a dependency or is generated)" in result.stdout


def test_plan_at_a_closed_ray_port_fails_in_seconds(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = invoke("plan", write_spec(tmp_path), "--address", address)
    assert result.exit_code == 1, result.output
    one_error_line(result.stderr, f"--address: nothing accepts connections at {address}")
    assert time.monotonic() - started < 30


@pytest.mark.slow
def test_plan_checks_the_cluster_fits_a_trial(ray_cluster, tmp_path):
    done = subprocess.run([sys.executable, "-m", "banray", "plan", str(write_spec(tmp_path, chains=2)),
                           "--address", ray_cluster], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        f"Cluster: {ray_cluster} has 2 CPU / 0 GPU: 2 trial(s) at a time (4 for all chains' trials at once)")
    # In this process Ray is connected to the same cluster already; plan uses that connection.
    result = invoke("plan", write_spec(tmp_path, **{"resources.workers_per_trial": 64}), "--address", ray_cluster)
    assert result.exit_code == 1, result.output
    one_error_line(result.stderr, "resources: a trial needs 64 worker(s) × 1 CPU / 0 GPU, but the cluster at "
                   f"{ray_cluster} has 2 CPU / 0 GPU")


# --- bad input to the commands that look at sweeps ----------------------------------------------------------


def hand_made_sweep(root: Path, state: bytes | None, name: str = "tiny") -> Path:
    """A sweep folder as the driver lays it out before training: its mark, spec.yaml and (given) state.json."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / ".banray-sweep").write_text(json.dumps({"banray_sweep": name}))
    (folder / "spec.yaml").write_text(yaml.safe_dump({"storage": str(root), **tiny_spec(name=name)}))
    if state is not None:
        (folder / "state.json").write_bytes(state)
    return folder


UNFINISHED = json.dumps({"sweep": "tiny", "spec_hash": "x", "finished": False, "chains": {}}).encode()

BAD_INPUT = [
    (["status", "{tmp}/nothing"], "{tmp}/nothing: no such folder", None),
    (["status", "{tmp}/papers"], "{tmp}/papers: not a sweep folder, and no sweep folder is in it", None),
    (["status", "{tmp}/papers/notes.txt"], "{tmp}/papers/notes.txt: a file, not a sweep folder", None),
    (["status", "{tmp}/runs/tiny"], "{tmp}/runs/tiny/state.json: not readable JSON", b"{not json"),
    (["status", "{tmp}/runs/tiny"], "{tmp}/runs/tiny/state.json: not a readable sweep state (KeyError",
     json.dumps({"finished": False}).encode()),
    (["ls", "{tmp}/nothing"], "{tmp}/nothing: no such folder", None),
    (["ls", "{tmp}/runs/tiny"], "{tmp}/runs/tiny: a sweep folder, not a storage root (`banray status", UNFINISHED),
    (["report", "{tmp}/papers"], "{tmp}/papers: not a sweep folder (no .banray-sweep", None),
    (["report", "{tmp}/runs/tiny"], "{tmp}/runs/tiny: the sweep has not finished (interrupted); `banray status`",
     UNFINISHED),
    (["ui", "{tmp}/nothing"], "{tmp}/nothing: no such folder", None),
    (["ui", "{tmp}/runs/tiny"], "records no tracking URI", UNFINISHED),
    (["ui", "{tmp}/runs/tiny", "--tracking-uri", "sqlite:///{tmp}/tyop.db"],
     "tracking URI: no MLflow store at {tmp}/tyop.db", UNFINISHED),
    (["promote", "tiny", "-g", "0", "--sweep-dir", "{tmp}/papers"], "{tmp}/papers: not a sweep folder", None),
    (["promote", "other", "-g", "0", "--sweep-dir", "{tmp}/runs/tiny"], "holds sweep 'tiny', not 'other'", UNFINISHED),
    (["promote", "tiny", "-g", "0", "--sweep-dir", "{tmp}/runs/tiny", "--tracking-uri", "sqlite:///x.db"],
     "--tracking-uri and --sweep-dir: pick one", UNFINISHED),
]


@pytest.mark.parametrize("args, expected, state", BAD_INPUT, ids=[
    "status-missing", "status-not-a-sweep", "status-a-file", "status-state-not-json", "status-state-without-chains",
    "ls-missing", "ls-a-sweep-folder", "report-not-a-sweep", "report-unfinished", "ui-missing", "ui-no-store-recorded",
    "ui-store-missing", "promote-not-a-sweep", "promote-another-sweep", "promote-two-stores"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, args, expected, state):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "papers").mkdir()
    (tmp_path / "papers" / "notes.txt").write_text("years of work")
    if state is not None:
        hand_made_sweep(tmp_path / "runs", state)
    before = contents(tmp_path)
    result = invoke(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    one_error_line(result.stderr, expected.replace("{tmp}", str(tmp_path)))
    assert contents(tmp_path) == before


def test_ls_lists_an_unreadable_sweep_with_its_reason(tmp_path):
    hand_made_sweep(tmp_path, UNFINISHED)
    hand_made_sweep(tmp_path, b"[1, 2]", name="broken")
    result = invoke("ls", tmp_path)
    assert result.exit_code == 0, result.output
    _, broken, tiny = result.stdout.splitlines()
    assert broken.split()[:4] == ["broken", "unreadable", "-", "-"]
    assert broken.endswith(f"{tmp_path}/broken/state.json: not a banray state.json (not a JSON object)")
    assert tiny.split()[:4] == ["tiny", "interrupted", "1", "0/2"]


def test_a_sweep_whose_folder_lock_is_held_is_running(tmp_path):
    from banray.sweep import lock
    from banray.storage import SweepStorage

    folder = hand_made_sweep(tmp_path, UNFINISHED)
    with lock.hold(SweepStorage(str(tmp_path), "tiny")):  # what a driver holds while it runs
        found = json.loads(invoke("status", folder, "--json").stdout)
    assert found["status"] == "running" and found["driver"]["pid"] == os.getpid()
    assert json.loads(invoke("status", folder, "--json").stdout)["status"] == "interrupted"


def test_ui_on_a_taken_port_says_so(tmp_path):
    from mlflow import MlflowClient

    folder = hand_made_sweep(tmp_path / "runs", UNFINISHED)
    MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").search_experiments(max_results=1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = invoke("ui", folder, "--port", port)
    assert result.exit_code == 2, result.output
    one_error_line(result.stderr, f"--port: 127.0.0.1:{port} is in use; pass another --port")


def test_help_of_every_new_command():
    for command, text in (("status", "SWEEP_OR_STORAGE"), ("ls", "STORAGE"), ("report", "SWEEP"), ("ui", "--port")):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and text in result.output, result.output


def state_of(folder: Path) -> dict:
    return json.loads((folder / "state.json").read_text())


# --- a finished sweep ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(ray_cluster, tmp_path_factory):
    """A real tiny sweep, 2 chains × (teacher + 1 generation), tracked in its own folder's SQLite store."""
    root = tmp_path_factory.mktemp("commands") / "runs"
    spec = parse_spec(tiny_spec(name="done", storage=str(root), chains=2, search={"trials": 1}))
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = sweep.run(spec, echo=lambda line: None)
    return root, Path(result.sweep_dir), result.report


def best_of(records: list[dict]) -> dict:
    return min((r for r in records if r["status"] == "finished"), key=lambda r: (r["val_error"], r["generation"]))


@pytest.mark.slow
def test_status_of_a_finished_sweep(finished):
    root, folder, report = finished
    before = contents(root)
    result = invoke("status", folder, "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert (found["sweep"], found["location"], found["status"], found["driver"]) == ("done", str(folder), "finished", None)
    spans = state_of(folder)["groups"]  # the finished groups' wall-clock spans, as the driver recorded them
    assert len(spans) == 4 and {(g["chain"], g["generation"]) for g in spans} == {(c, k) for c in (0, 1) for k in (0, 1)}
    assert found["groups"] == {"total": 4, "done": 4, "remaining": 0, "skipped": 0, "at_once": found["groups"]["at_once"],
                               "mean_s": pytest.approx(sum(g["ended_at"] - g["started_at"] for g in spans) / 4)}
    assert found["eta_s"] == 0 and found["makespan_s"] == report["elapsed_s"]
    for chain, recorded in zip(found["chains"], report["chains"]):
        assert (chain["generations_done"], chain["finished"], chain["running"]) == (2, True, [])
        assert [g["test_error"] for g in chain["generations"]] == [g["test_error"] for g in recorded["generations"]]
        assert chain["best"]["generation"] == best_of(recorded["generations"])["generation"]

    text = invoke("status", folder).stdout.splitlines()
    assert text[0].startswith(f"Sweep 'done' in {folder}: finished; started 20")
    teacher = report["chains"][1]["generations"][0]
    best = best_of(report["chains"][1]["generations"])
    assert text[4] == (f"  chain 1: 2 of 2 generation(s) done; best by val_error: generation {best['generation']} "
                       f"(val_error {pct(best['val_error'])}, test_error {pct(best['test_error'])})")
    assert text[5] == f"    generation 0: val_error {pct(teacher['val_error'])}, test_error {pct(teacher['test_error'])}"
    assert text[-1].startswith("Groups: 4 of 4 done; finished, makespan ")
    assert contents(root) == before


@pytest.mark.slow
def test_ls_and_status_of_a_storage_root(finished):
    root, folder, _ = finished
    (root / "not-a-sweep").mkdir(exist_ok=True)  # someone's folder beside the sweeps: not listed
    for command in ("ls", "status"):
        result = invoke(command, root)
        assert result.exit_code == 0, result.output
        header, line = result.stdout.splitlines()
        assert header.split() == ["NAME", "STATUS", "CHAINS", "GENERATIONS", "STARTED"]
        assert re.fullmatch(r"done\s+finished\s+2\s+4/4\s+20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC", line), line
    (row,) = json.loads(invoke("ls", root, "--json").stdout)
    assert (row["name"], row["status"], row["generations_done"], row["location"]) == ("done", "finished", 4, str(folder))
    assert invoke("ls", root / "not-a-sweep").stdout == f"No sweeps in {root / 'not-a-sweep'}\n"


@pytest.mark.slow
def test_promote_finds_the_sweeps_store_and_report_renders_the_new_best(finished, monkeypatch):
    import mlflow

    root, folder, _ = finished
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    report = json.loads((folder / "report.json").read_text())  # as the sweep wrote it
    aliases = report["mlflow"]["registered_model"]["aliases"]
    other = next(k for k in (0, 1) if aliases[f"gen-{k}"] != aliases["best"])
    result = invoke("promote", "done", "-g", other, "--sweep-dir", folder)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"done@best → version {aliases[f'gen-{other}']} (@gen-{other})\n"
    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("done", "best").version) == aliases[f"gen-{other}"]

    before = {name: (folder / name).stat().st_mtime_ns for name in ("report.json", "report.md", "report.png")}
    result = invoke("report", folder)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"Report: {folder}/report.json, {folder}/report.md, {folder}/report.png\n"
    rendered = json.loads((folder / "report.json").read_text())
    assert rendered["mlflow"]["registered_model"]["aliases"] == {**aliases, "best": aliases[f"gen-{other}"]}
    assert {**rendered, "mlflow": None} == {**report, "mlflow": None}  # nothing else moved
    assert {**rendered["mlflow"], "registered_model": None} == {**report["mlflow"], "registered_model": None}
    assert all((folder / name).stat().st_mtime_ns > mtime for name, mtime in before.items())
    assert not list(folder.glob("*.partial-*"))

    # Without --sweep-dir, --tracking-uri or $MLFLOW_TRACKING_URI: ./runs/<sweep>, the spec's default storage.
    monkeypatch.chdir(root.parent)
    back = next(k for k in (0, 1) if k != other)
    result = invoke("promote", "done", "-g", back)
    assert result.exit_code == 0, result.output
    assert str(client.get_model_version_by_alias("done", "best").version) == aliases[f"gen-{back}"]


@pytest.mark.slow
def test_ui_serves_the_sweeps_store_until_stopped(finished, tmp_path):
    _, folder, report = finished
    port = free_port()
    log_path = tmp_path / "ui.log"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with open(log_path, "w") as log:
        ui = subprocess.Popen([sys.executable, "-m", "banray", "ui", str(folder), "--port", str(port)], cwd=tmp_path,
                              stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base, server_pid = f"http://127.0.0.1:{port}", None
    try:
        wait_until(lambda: "workflowType" in log_path.read_text() or ui.poll() is not None, 400, "the UI's link")
        output = log_path.read_text()
        experiment_id = report["mlflow"]["experiment_id"]
        assert f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning" in output.splitlines(), output
        server_pid = int(re.search(r"server pid (\d+)", output).group(1))
        page = requests.get(f"{base}/", timeout=30)
        assert page.status_code == 200 and "<title>MLflow</title>" in page.text
        answer = requests.get(f"{base}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": "done"},
                              timeout=30).json()
        assert answer["experiment"]["experiment_id"] == experiment_id
    finally:
        ui.send_signal(signal.SIGTERM)
        code = ui.wait(60)
    assert code == 0, log_path.read_text()
    assert "Stopping the MLflow server" in log_path.read_text()
    with pytest.raises(ProcessLookupError):
        os.killpg(server_pid, 0)  # the server and every process it started are gone
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base}/health", timeout=5)


def copy_to_s3(folder: Path, prefix: str, only: tuple[str, ...] | None = None) -> str:
    """The sweep folder copied to s3://banray/<prefix>/<name> with pyarrow (every file, or those named)."""
    s3, _ = pafs.FileSystem.from_uri("s3://banray")
    target = f"banray/{prefix}/{folder.name}"
    if only is None:
        pafs.copy_files(str(folder), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3)
    for name in only or ():
        with s3.open_output_stream(f"{target}/{name}") as stream:
            stream.write((folder / name).read_bytes())
    return f"s3://{target}"


@pytest.mark.slow
def test_status_and_ls_of_a_sweep_in_s3(finished, s3_endpoint):
    _, folder, _ = finished
    prefix = f"commands-{os.getpid()}"
    uri = copy_to_s3(folder, prefix)
    local = json.loads(invoke("status", folder, "--json").stdout)
    result = invoke("status", uri, "--json")
    assert result.exit_code == 0, result.output
    remote = json.loads(result.stdout)
    assert remote["location"] == uri and remote["status"] == "finished"
    unlike = {"location": None, "started_at": None, "at": None}  # where, and when spec.yaml and the call were made
    assert {**remote, **unlike} == {**local, **unlike}
    result = invoke("ls", f"s3://banray/{prefix}")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].split()[:4] == ["done", "finished", "2", "4/4"]
    result = invoke("status", f"s3://banray/{prefix}/nothing")
    assert result.exit_code == 2
    one_error_line(result.stderr, f"s3://banray/{prefix}/nothing: no such folder")


# --- a running sweep ----------------------------------------------------------------------------------------


def running_generation(folder: Path) -> int | None:
    running = state_of(folder)["chains"]["0"]["running"]
    return None if running is None else running["generation"]


@pytest.mark.slow
def test_status_and_ls_of_a_running_sweep_then_of_it_killed(ray_cluster, s3_endpoint, tmp_path):
    spec = tiny_spec(name="live", storage=str(tmp_path / "runs"), train={"epochs": 60, "lr": 0.05},
                     search={"trials": 1})
    folder = tmp_path / "runs" / "live"
    driver, log = start_driver(spec, tmp_path, ray_cluster)
    prefix = f"live-{os.getpid()}"
    try:
        wait_until(lambda: running_generation(folder) is not None, 300, "the teacher's group in state.json")
        found = json.loads(invoke("status", folder, "--json").stdout)
        assert found["status"] == "running" and found["driver"]["pid"] == driver.pid
        (chain,) = found["chains"]
        assert chain["running"][0]["generation"] in (0, 1) and chain["running"][0]["started_at"] > time.time() - 600
        if chain["generations_done"] == 0:
            assert found["eta_s"] is None
            text = invoke("status", folder).stdout
            assert "running generation 0 since " in text and "ETA unknown (no group has finished yet)" in text
        listed = invoke("ls", tmp_path / "runs").stdout.splitlines()[1].split()
        assert listed[:4] == ["live", "running", "1", f"{chain['generations_done']}/2"]

        wait_until(lambda: running_generation(folder) == 1, 300, "generation 1's group in state.json")
        found = json.loads(invoke("status", folder, "--json").stdout)
        (chain,) = found["chains"]
        assert (chain["generations_done"], chain["best"]["generation"], chain["finished"]) == (1, 0, False)
        spans = state_of(folder)["groups"]
        mean = sum(g["ended_at"] - g["started_at"] for g in spans) / len(spans)
        assert found["groups"]["mean_s"] == pytest.approx(mean) and found["groups"]["remaining"] == 1
        # The one group left runs on its own, whatever the groups at once: the mean less what it has run.
        ran = found["at"] - chain["running"][0]["started_at"]
        assert found["eta_s"] == pytest.approx(max(0.0, mean - ran))
        text = invoke("status", folder).stdout
        assert "chain 0: 1 of 2 generation(s) done; running generation 1 since " in text
        assert "best so far by val_error: generation 0 (val_error " in text and "; ETA about " in text
        uri = copy_to_s3(folder, prefix, only=(".banray-sweep", "spec.yaml", "state.json"))  # a snapshot, no lease
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    for location, root in ((folder, tmp_path / "runs"), (uri, f"s3://banray/{prefix}")):
        found = json.loads(invoke("status", location, "--json").stdout)
        assert found["status"] == "interrupted" and found["driver"] is None
        assert found["chains"][0]["running"][0]["generation"] == 1
        text = invoke("status", location).stdout
        assert "interrupted in generation 1 (started " in text
        assert f"about {duration(mean)} left once resumed (mean group {duration(mean)}, 1 group(s) left" in text
        assert invoke("ls", root).stdout.splitlines()[1].split()[:2] == ["live", "interrupted"]
