"""The one bound on a process's MLflow calls and their retries (banray.results.mlflow_calls), on real SQLite stores and
a real tracking server behind a slow proxy."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from contextlib import contextmanager

import mlflow
import pytest
import sqlalchemy
import sqlalchemy.exc
import sqlalchemy.pool
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

from banray.records import GenerationRecord
from banray.results import mlflow_calls, tracking
import servers

THREADS = 32  # more than a pool's 5 + 10 connections, as 32 chains' ensembles were


@pytest.fixture
def bound(monkeypatch):
    """A fresh bound of 6 calls, over SQLAlchemy's default pool of 5: the pool sized by banray (6 + 10)."""
    monkeypatch.setenv(mlflow_calls.CALLS_VARIABLE, "6")
    monkeypatch.delenv(mlflow_calls.POOL_SIZE_VARIABLE, raising=False)
    monkeypatch.setattr(mlflow_calls, "_slots", None)
    return 6


@contextmanager
def listening(target, event: str, function, **options):
    sqlalchemy.event.listen(target, event, function, **options)
    try:
        yield
    finally:
        sqlalchemy.event.remove(target, event, function)


def ensembles_run(track, experiment_id, generation_run_id, chain):
    """What a chain's ensembles do in MLflow: find the chain's run, start a run under it, log, end it."""
    parent = tracking.chain_run_of(track, generation_run_id)
    run_id = tracking.start_run(track, experiment_id, f"chain{chain}-ensembles", {}, params={"ens2.members": [1, 2]},
                                parent_run_id=parent)
    tracking.log_metrics(track.client(), run_id, {"ens2_test_error": 0.1}, step=2)
    tracking.end_run(track, run_id)


def in_threads(function, count):
    errors = []

    def run(k):
        try:
            function(k)
        except Exception as exc:  # collected: the test says which failed
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


@pytest.fixture
def impatient_pool(monkeypatch):
    """SQL stores made from now on give up waiting for a connection after 1 s, not 30."""
    create_engine = sqlalchemy.create_engine
    monkeypatch.setattr(sqlalchemy, "create_engine", lambda *args, **kwargs: create_engine(*args, pool_timeout=1,
                                                                                            **kwargs))


def busy_store():
    """Every statement 5 ms slower, as on a machine whose cores train: MLflow opens the same sessions, slower."""
    return listening(sqlalchemy.engine.Engine, "before_cursor_execute", lambda *_: time.sleep(0.005))


def chains(tmp_path, count):
    """A store with `count` chains' runs, each with its BAN-2 run nested under it."""
    track = tracking.resolve(None, "chains", tmp_path)
    experiment_id = tracking.ensure_experiment(track)
    generations = [tracking.start_run(track, experiment_id, f"chain{c}-gen2", {},
                                      parent_run_id=tracking.start_chain_run(track, experiment_id, "chains", c, "main", 2))
                   for c in range(count)]
    return track, experiment_id, generations


def test_mlflows_own_client_runs_a_busy_stores_pool_out(tmp_path, impatient_pool):
    """The failure: 32 chains' ensembles side by side through MLflow's client alone wait for the pool's 15
    connections until they give up."""
    track, experiment_id, generations = chains(tmp_path, THREADS)

    def unbounded_ensembles_run(chain):
        client = mlflow.MlflowClient(track.uri)
        parent = client.get_run(generations[chain]).data.tags[tracking.PARENT]
        run = client.create_run(experiment_id, run_name=f"chain{chain}-ensembles", tags={tracking.PARENT: parent})
        client.log_param(run.info.run_id, "ens2.members", [1, 2])
        client.set_terminated(run.info.run_id)

    with busy_store():
        errors = in_threads(unbounded_ensembles_run, THREADS)
    assert any("QueuePool limit of size" in str(e) for e in errors), errors


def test_through_the_bound_more_threads_than_the_pool_has_connections_never_exhaust_it(tmp_path, bound,
                                                                                     impatient_pool, caplog):
    """Through the bound, no more calls than it allows hold connections, so nothing waits for one and nothing
    needs a retry."""
    track, experiment_id, generations = chains(tmp_path, THREADS)
    held, most = [0], [0]
    counted = threading.Lock()

    def checkout(*_):
        with counted:
            held[0] += 1
            most[0] = max(most[0], held[0])

    def checkin(*_):
        with counted:
            held[0] -= 1

    caplog.set_level(logging.WARNING, logger=mlflow_calls.__name__)
    with (listening(sqlalchemy.pool.Pool, "checkout", checkout), listening(sqlalchemy.pool.Pool, "checkin", checkin),
          busy_store()):
        errors = in_threads(lambda c: ensembles_run(track, experiment_id, generations[c], c), THREADS)
    assert errors == []
    # MLflow opens a second session inside some calls (create_run reads the experiment): two per call at most.
    assert 1 <= most[0] <= 2 * bound
    retries = [r.getMessage() for r in caplog.records if r.name == mlflow_calls.__name__]
    assert not retries
    runs = track.client().search_runs([experiment_id], filter_string="attributes.run_name LIKE '%-ensembles'")
    assert len(runs) == THREADS and {r.info.status for r in runs} == {"FINISHED"}


def test_a_store_locked_by_another_process_is_retried_until_it_is_free(tmp_path, bound, caplog):
    """A real SQLite lock held by another connection. MLflow waits 20 s for a locked store (busy_timeout);
    here 0.1 s, so its `database is locked` comes at once, and the lock is let go once banray has retried."""
    track = tracking.resolve(None, "locked", tmp_path)
    experiment_id = tracking.ensure_experiment(track)
    database = str(tmp_path / "mlflow.db")

    def impatient_sqlite(conn, cursor, statement, parameters, context, executemany):
        return statement.replace("busy_timeout = 20000", "busy_timeout = 100"), parameters

    retried = threading.Event()

    class Retried(logging.Handler):
        def emit(self, record):
            if "database is locked" in record.getMessage():
                retried.set()

    handler = Retried(logging.WARNING)
    logging.getLogger(mlflow_calls.__name__).addHandler(handler)
    locker = sqlite3.connect(database, isolation_level=None)
    try:
        with listening(sqlalchemy.engine.Engine, "before_cursor_execute", impatient_sqlite, retval=True):
            locker.execute("BEGIN EXCLUSIVE")
            outcome = {}
            writer = threading.Thread(target=lambda: outcome.setdefault(
                "run", tracking.start_run(track, experiment_id, "written-through-a-lock", {})))
            writer.start()
            assert retried.wait(60), "the locked store's error was not retried"
            locker.execute("COMMIT")
            writer.join(60)
    finally:
        logging.getLogger(mlflow_calls.__name__).removeHandler(handler)
        locker.close()
    assert track.client().get_run(outcome["run"]).info.run_name == "written-through-a-lock"


def test_what_passes_is_told_by_the_cause_mlflow_wraps():
    def wrapped(cause, **kwargs):
        try:
            raise cause
        except Exception as exc:
            try:
                raise MlflowException(str(exc), **kwargs) from exc
            except MlflowException as wrapper:
                return wrapper

    pool = sqlalchemy.exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached, connection timed out")
    assert mlflow_calls.passes(wrapped(pool))
    assert mlflow_calls.passes(MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE))
    assert not mlflow_calls.passes(MlflowException("Run 'x' not found", error_code=RESOURCE_DOES_NOT_EXIST))
    assert not mlflow_calls.passes(wrapped(ValueError("a bad param")))


def test_a_command_a_person_waits_on_does_not_retry(tmp_path, monkeypatch):
    calls = []

    def locked():
        calls.append(1)
        raise MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE)

    with tracking.impatient_http(), pytest.raises(MlflowException):
        mlflow_calls.call("a look", locked)
    assert len(calls) == 1


TIMED_OUT, UNAVAILABLE = {3, 8, 20, 41, 55}, {5, 13, 30, 47}  # of the proxy's requests, counted from 0


@pytest.mark.slow
def test_evaluations_and_the_report_survive_a_tracking_server_that_answers_slowly(tracking_server, tmp_path,
                                                                                  monkeypatch, caplog):
    """Through a proxy that answers every request late, lets some time out and answers others 503 (MLflow's own
    retries off, so that banray's are what is left): six chains' ensembles side by side, then the report's
    summary run with its artifacts and table, all reach the real tracking server behind it."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(mlflow_calls, "_slots", None)

    def answer(n):
        return (3, 504) if n in TIMED_OUT else (0.2, 503) if n in UNAVAILABLE else (0.2, None)

    caplog.set_level(logging.WARNING, logger=mlflow_calls.__name__)
    with servers.slow_proxy(tracking_server, answer) as uri:
        track = tracking.Tracking(uri, "slow-server", None)
        experiment_id = tracking.ensure_experiment(track)
        generations = [tracking.start_run(track, experiment_id, f"chain{c}-gen1", {},
                                          parent_run_id=tracking.start_chain_run(track, experiment_id, "slow", c,
                                                                                 "main", 1))
                       for c in range(6)]
        errors = in_threads(lambda c: ensembles_run(track, experiment_id, generations[c], c), 6)
        report = tmp_path / "report.md"
        report.write_text("the report\n")
        summary = tracking.start_run(track, experiment_id, "summary", {})
        tracking.log_artifacts(track, summary, [report])
        track.client().log_table(summary, {"comparison": ["BAN-1 − Teacher"], "mean": [0.1]}, "paired.json")
        tracking.end_run(track, summary)
    assert errors == []
    assert any("timeout" in r.getMessage() for r in caplog.records)
    assert any("503" in r.getMessage() or "TEMPORARILY_UNAVAILABLE" in r.getMessage() for r in caplog.records)
    direct = tracking.Tracking(tracking_server, "slow-server", None).client()
    runs = {r.info.run_name: r for r in direct.search_runs([experiment_id], max_results=100)}
    assert {f"chain{c}-ensembles" for c in range(6)} <= set(runs)
    assert all(runs[f"chain{c}-ensembles"].data.metrics["ens2_test_error"] == 0.1 for c in range(6))
    assert {a.path for a in direct.list_artifacts(runs["summary"].info.run_id)} == {"report.md", "paired.json"}


@pytest.mark.timeout(300)  # a guard: a thread that never gets its turn hangs the test
def test_models_and_registry_versions_logged_side_by_side_through_a_bound_of_one(tmp_path, monkeypatch):
    """The fluent API's block (a model's logging, the registry's versions) holds a turn of the bound while its
    client calls run: with a single turn, threads that log models, versions and metrics at once each get theirs."""
    monkeypatch.setenv(mlflow_calls.CALLS_VARIABLE, "1")
    monkeypatch.setattr(mlflow_calls, "_slots", None)
    track, experiment_id, generations = chains(tmp_path, 4)
    uris = {}

    def model_and_metrics(chain):
        uris[chain] = tracking.log_model(track, generations[chain], torch.nn.Linear(2, 2), torch.zeros(1, 2).numpy())
        tracking.log_metrics(track.client(), generations[chain], {"test_error": 0.1}, step=2)

    assert in_threads(model_and_metrics, 4) == []
    records = [GenerationRecord(chain=c, generation=2, role="student", arch="linear", objective="ban",
                                status="finished", mlflow_run_id=generations[c], teacher_checkpoint=None,
                                teacher_run_id=None, val_error=0.1 + c / 100, model_uri=uris[c]) for c in range(4)]
    aliases = {}

    def versions_or_metrics(k):
        if k == 0:
            aliases.update(tracking.register_generations(track, "chains", records, "val_error", experiment_id))
        else:
            tracking.log_metrics(track.client(), generations[k], {"test_nll": 0.2}, step=2)

    assert in_threads(versions_or_metrics, 4) == []
    assert aliases["best"] == aliases["chain0-gen-2"]
