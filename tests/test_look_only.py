"""Commands that only look (`plan`, `promote`) have no side effects: at a mistyped tracking URI they create
no MLflow database, folder or mlruns/ (MLflow's client would create all three), and a tracking server that
does not answer is given up on in seconds, not after MLflow's 4 minutes of retries. Every failure is one
line on stderr."""

import http.server
import os
import subprocess
import sys
from contextlib import contextmanager

import pytest
import yaml
from click.testing import CliRunner
from conftest import tiny_spec

import servers
from banray.commands.cli import cli


def contents(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """tmp_path/cwd as the working directory, where a relative store or a default mlruns/ would appear."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    return tmp_path


def one_error_line(stderr: str, *expected: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def write_spec(tmp_path, **overrides):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(storage=str(tmp_path / "runs"), **overrides)))
    return path


def sqlite_store(path) -> str:
    """A real MLflow SQLite store at `path`, made the way a sweep makes one."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{path}"
    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    return uri


# (tracking URI, MLFLOW_ALLOW_FILE_STORE, plan's exit status, what plan's last line says); {tmp} is tmp_path.
PLAN_CASES = [
    pytest.param("sqlite:///{tmp}/tyop/mlflow.db", None, 1,
                 "there is no MLflow store at {tmp}/tyop/mlflow.db, and its folder {tmp}/tyop does not exist",
                 id="sqlite-in-a-missing-folder"),
    pytest.param("sqlite:///mlfow.db", None, 0,
                 "Tracking: sqlite:///mlfow.db: no MLflow store at {tmp}/cwd/mlfow.db yet; the sweep will create it there",
                 id="sqlite-relative-new"),
    pytest.param("sqlite:///{tmp}/new.db", None, 0, "no MLflow store at {tmp}/new.db yet; the sweep will create it there",
                 id="sqlite-absolute-new"),
    pytest.param("sqlite://", None, 1, "an in-memory SQLite database keeps nothing", id="sqlite-in-memory"),
    pytest.param("mlrnus", None, 1, "a file store, which MLflow 3 refuses unless MLFLOW_ALLOW_FILE_STORE=true",
                 id="file-store-path"),
    pytest.param("file://{tmp}/tyop/store", None, 1, "a file store, which MLflow 3 refuses", id="file-uri"),
    pytest.param("{tmp}/tyop/store", "true", 1,
                 "there is no MLflow store at {tmp}/tyop/store, and its folder {tmp}/tyop does not exist",
                 id="allowed-file-store-in-a-missing-folder"),
    pytest.param("file://{tmp}/store", "true", 0, "no MLflow store at {tmp}/store yet; the sweep will create it there",
                 id="allowed-file-store-new"),
]


@pytest.mark.parametrize("uri, allow_file_store, status, expected", PLAN_CASES)
@pytest.mark.parametrize("given_by", ["spec", "env"])
def test_plan_at_a_mistyped_local_store_creates_nothing(workdir, monkeypatch, uri, allow_file_store, status, expected,
                                                        given_by):
    uri, expected = uri.format(tmp=workdir), expected.format(tmp=workdir)
    if allow_file_store:
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", allow_file_store)
    if given_by == "env":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        path = write_spec(workdir)
    else:
        path = write_spec(workdir, tracking={"uri": uri})
    before = contents(workdir)
    result = CliRunner().invoke(cli, ["plan", str(path)])
    assert result.exit_code == status, result.output
    if status:
        one_error_line(result.stderr, f"error: tracking.uri: {uri}: ", expected)
    else:
        assert result.stderr == ""
        assert result.stdout.splitlines()[-1].endswith(expected), result.stdout
    assert contents(workdir) == before  # no .db file, no folder, no mlruns/


def test_plan_looks_at_an_existing_store_read_only(workdir):
    uri = sqlite_store(workdir / "mlflow.db")
    stored = (workdir / "mlflow.db").read_bytes()
    path = write_spec(workdir, tracking={"uri": uri})
    before = contents(workdir)
    result = CliRunner().invoke(cli, ["plan", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == f"Tracking: {uri}: an MLflow store at {workdir / 'mlflow.db'} (looked at read-only)"
    assert contents(workdir) == before and (workdir / "mlflow.db").read_bytes() == stored


@pytest.mark.parametrize("content, expected", [
    (b"not a database, a note\n" * 10, "is not a readable SQLite database (file is not a database)"),
    (None, "is a SQLite database but not an MLflow store (no alembic_version, experiments"),
], ids=["text-file", "other-sqlite-database"])
def test_plan_fails_on_a_file_that_is_no_mlflow_store_and_leaves_it_alone(workdir, content, expected):
    target = workdir / "other.db"
    if content is None:
        import sqlite3
        from contextlib import closing

        with closing(sqlite3.connect(target)) as db:
            db.execute("CREATE TABLE notes (text)")
            db.commit()
    else:
        target.write_bytes(content)
    stored = target.read_bytes()
    path = write_spec(workdir, tracking={"uri": f"sqlite:///{target}"})
    before = contents(workdir)
    result = CliRunner().invoke(cli, ["plan", str(path)])
    assert result.exit_code == 1, result.output
    one_error_line(result.stderr, expected)
    assert contents(workdir) == before and target.read_bytes() == stored


PROMOTE_NO_STORE = [
    pytest.param("sqlite:///mlfow.db", "no MLflow store at {tmp}/cwd/mlfow.db (sqlite:///mlfow.db)", id="sqlite-relative"),
    pytest.param("sqlite:///{tmp}/tyop/mlflow.db", "no MLflow store at {tmp}/tyop/mlflow.db", id="sqlite-missing-folder"),
    pytest.param("mlruns", "no MLflow store at {tmp}/cwd/mlruns (mlruns)", id="file-store-path"),
    pytest.param("file://{tmp}/tyop", "no MLflow store at {tmp}/tyop", id="file-uri"),
]


@pytest.mark.parametrize("uri, expected", PROMOTE_NO_STORE)
def test_promote_at_a_uri_without_a_store_exits_2_and_creates_nothing(workdir, uri, expected):
    uri, expected = uri.format(tmp=workdir), expected.format(tmp=workdir)
    before = contents(workdir)
    result = CliRunner().invoke(cli, ["promote", "tiny", "-g", "1", "--tracking-uri", uri])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    one_error_line(result.stderr, f"error: --tracking-uri: {expected}")
    assert contents(workdir) == before


def test_promote_the_real_command_at_a_mistyped_sqlite_path(workdir):
    """The installed entry point, in its own process, with the URI from the environment."""
    before = contents(workdir)
    env = {**os.environ, "MLFLOW_TRACKING_URI": "sqlite:///tyop.db"}
    done = subprocess.run([sys.executable, "-m", "banray", "promote", "tiny", "-g", "0"], cwd=workdir / "cwd", env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    one_error_line(done.stderr, f"error: --tracking-uri: no MLflow store at {workdir}/cwd/tyop.db (sqlite:///tyop.db)")
    assert contents(workdir) == before


@pytest.mark.timeout(60)  # a guard: without the health check MLflow retries for about 255 s
def test_promote_at_a_closed_port_gives_up_at_once(workdir):
    port = servers.free_port()  # nothing listens there once free_port has closed its socket
    uri = f"http://127.0.0.1:{port}"
    done = subprocess.run([sys.executable, "-m", "banray", "promote", "tiny", "-g", "0", "--tracking-uri", uri],
                          cwd=workdir, capture_output=True, text=True, timeout=55, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    one_error_line(done.stderr, f"error: --tracking-uri: {uri} does not answer (ConnectionError", "Connection refused")


@contextmanager
def healthy_but_failing_server():
    """A server whose /health answers OK and whose every API call answers 503, the code MLflow retries."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/health"
            body = b"OK" if ok else b"<html>\n<h1>503 Service Unavailable</h1>\n</html>\n"
            self.send_response(200 if ok else 503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_PATCH = do_DELETE = do_GET

        def log_message(self, *args):
            pass

    with servers.serving(Handler) as uri:
        yield uri


@pytest.mark.timeout(60)  # a guard: with MLflow's own retry settings this takes about 4 minutes
def test_promote_gives_up_on_a_failing_server_in_seconds(workdir):
    with healthy_but_failing_server() as uri:
        result = CliRunner().invoke(cli, ["promote", "tiny", "-g", "0", "--tracking-uri", uri])
    assert result.exit_code == 1, result.output
    # MLflow 3.17 names the URL and the exhausted retries, 3.18 the endpoint and the status: both say 503
    one_error_line(result.stderr, f"error: --tracking-uri: {uri} failed: API request to ", "/api/2.0/mlflow/", "503")


def test_promote_leaves_the_environment_as_it_was(workdir, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "33")
    before = dict(os.environ)
    uri = sqlite_store(workdir / "mlflow.db")
    result = CliRunner().invoke(cli, ["promote", "tiny", "-g", "0", "--tracking-uri", uri])
    assert result.exit_code == 2, result.output
    assert dict(os.environ) == before


def test_promote_a_missing_model_in_a_local_store_is_one_line(workdir):
    uri = sqlite_store(workdir / "mlflow.db")
    before = contents(workdir)
    result = CliRunner().invoke(cli, ["promote", "nomodel", "-g", "0", "--tracking-uri", uri])
    assert result.exit_code == 2, result.output
    one_error_line(result.stderr, f"error: registered model 'nomodel' has no alias @gen-0 at {uri}: ",
                   "Registered Model with name=nomodel not found")
    assert contents(workdir) == before


def test_promote_a_missing_model_on_a_tracking_server_is_one_line(tracking_server, workdir):
    result = CliRunner().invoke(cli, ["promote", "nomodel", "-g", "0", "-c", "3", "--tracking-uri", tracking_server])
    assert result.exit_code == 2, result.output
    one_error_line(result.stderr, f"error: registered model 'nomodel' has no alias @chain3-gen-0 at {tracking_server}: ",
                   "not found")
