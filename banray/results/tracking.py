"""MLflow tracking: one experiment per sweep; in it a run per chain (and per chain's control arm), the chain's
generation runs nested under it, each generation's trial runs nested under that; a summary run per sweep.

A chain's run logs each generation's scores at step = generation, so MLflow's chart view draws one line per
chain over its generations with no configuration. Every run carries `banray.level` (sweep, chain, generation,
trial), `banray.arm` (main, control) and `banray.column` (the report column it fills), and a markdown
description (the `mlflow.note.content` tag) that says what it is.

Parent links are set explicitly with the `mlflow.parentRunId` tag, because the active-run stack does
not cross the process boundaries between the driver, the Tune trials and the Train workers. Runs are
created through `MlflowClient` with an explicit run id everywhere, so no process depends on another's
global MLflow state.
"""

from __future__ import annotations

import getpass
import importlib
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from banray.catalog.local_cache import user_cache
from banray.columns import report_column
from banray.environment import variables_for_a_while
from banray.results import mlflow_calls
from banray.selection import best_generation
from banray.records import ARM_RECIPES, MAIN_ARM
from banray.spec import group_name, role

TAG_PREFIX = "banray."
PARENT = "mlflow.parentRunId"
NOTE = "mlflow.note.content"  # MLflow shows this tag as the markdown description of a run or an experiment
NOTE_LIMIT = 8000  # the longest tag value MLflow stores
PARAM_LIMIT = 6000  # the longest param value MLflow stores; an ensemble teacher's list of members can be longer
# What MLflow's client uses for a local store (its SQL store, the schema check): private modules of MLflow.
_STORE_MODULES = ("mlflow.store.db.utils", "mlflow.store.tracking.sqlalchemy_store")


@dataclass(frozen=True)
class Tracking:
    uri: str
    experiment: str
    artifact_location: str | None  # set only for the local store, so artifacts stay in the sweep folder

    def client(self) -> mlflow_calls.BoundedClient:
        """MLflow's client, each of its calls in a turn of the process's bound and retried (banray.results.mlflow_calls)."""
        from mlflow import MlflowClient

        mlflow_calls.size_pool()
        return mlflow_calls.BoundedClient(MlflowClient(tracking_uri=self.uri))


def import_client() -> None:
    """Import MLflow's client and its local store ahead of a first MLflow call (seconds of CPU). A store
    module that another MLflow has moved is left for that call to find."""
    import mlflow  # noqa: F401

    for name in _STORE_MODULES:
        with suppress(ImportError):
            importlib.import_module(name)


HEALTH_TIMEOUT_S = 5.0


def server_problem(uri: str, timeout: float = HEALTH_TIMEOUT_S) -> str | None:
    """Why the tracking server at `uri` (http or https) cannot be used, or None if its /health answers 200.
    One GET with `timeout`, no retries: a command a person waits on learns in seconds that nothing answers."""
    import requests

    health = uri.rstrip("/") + "/health"
    try:
        response = requests.get(health, timeout=timeout)
    except requests.RequestException as exc:
        return f"{uri} does not answer ({type(exc).__name__}: {exc})"
    if response.status_code != 200:
        return f"{health} answered HTTP {response.status_code}, not 200"
    return None


@contextmanager
def impatient_http(retries: int = 2, timeout_s: int = 10):
    """MLflow's HTTP client retries a request 7 times with exponential backoff and waits up to 120 s for
    each answer (about 4 minutes before a dead server is given up on), and banray retries an MLflow call
    that failed on an outage for minutes more. For a command a person waits on: `retries` retries, 1 s
    backoff, `timeout_s` per request (MLflow reads these from the environment only: each is set unless the
    environment sets its own, and put back afterwards), and none of banray's retries."""
    settings = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s),
    }
    with variables_for_a_while(settings, keep_existing=True), mlflow_calls.MLFLOW_RETRY.shortened(0):
        yield


@dataclass(frozen=True)
class LocalStore:
    """What a tracking URI naming a store on this machine points at, found without creating anything."""

    kind: str  # "sqlite", or "file" (MLflow's file store: a folder path or a file:// URI)
    path: Path | None  # absolute; None for an in-memory SQLite database
    exists: bool  # an MLflow store is there
    problem: str | None = None  # why the URI cannot serve as a store, if it cannot


# Tables every MLflow SQL store has; a SQLite database without them belongs to something else.
_MLFLOW_TABLES = {"alembic_version", "experiments", "runs", "registered_models"}


def local_store(uri: str) -> LocalStore | None:
    """The local store `uri` names, looked at read-only (a SQLite file opened with mode=ro, a folder
    listed), or None if `uri` is not local (a tracking server, a database server). MLflow's client
    creates a missing local store, with its parent folders, so a command that only looks must ask
    here and not open one through MLflow."""
    from mlflow.utils.uri import get_uri_scheme

    scheme = get_uri_scheme(uri)
    if scheme == "sqlite":
        return _sqlite_store(uri)
    if scheme in ("", "file"):
        return _file_store(uri)
    return None


def _sqlite_store(uri: str) -> LocalStore:
    from sqlalchemy.engine import make_url

    try:
        database = make_url(uri).database
    except Exception as exc:  # SQLAlchemy's ArgumentError, ValueError: the URI cannot be parsed
        return LocalStore("sqlite", None, False, f"not a SQLite URI SQLAlchemy can read ({exc})")
    if not database or database == ":memory:":
        return LocalStore("sqlite", None, False, "an in-memory SQLite database keeps nothing once its process "
                          "ends, and every Ray worker would get its own")
    path = Path(os.path.abspath(database))
    if not path.exists():
        return LocalStore("sqlite", path, False)
    if not path.is_file():
        return LocalStore("sqlite", path, False, f"{path} is a folder, not a SQLite file")
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = None
            if "alembic_version" in tables:
                row = db.execute("SELECT version_num FROM alembic_version").fetchone()
                version = row[0] if row else None
    except sqlite3.Error as exc:
        return LocalStore("sqlite", path, False, f"{path} is not a readable SQLite database ({exc})")
    if not tables:
        return LocalStore("sqlite", path, False)  # an empty file: MLflow would set its tables up in it
    if not _MLFLOW_TABLES <= tables:
        return LocalStore("sqlite", path, False, f"{path} is a SQLite database but not an MLflow store "
                          f"(no {', '.join(sorted(_MLFLOW_TABLES - tables))} table)")
    expected = _schema_head()
    if expected is not None and version != expected:
        import mlflow

        return LocalStore("sqlite", path, True, f"its MLflow schema is version {version}, MLflow {mlflow.__version__} "
                          f"needs {expected} (`mlflow db upgrade {uri}` migrates an older store; back it up first)")
    return LocalStore("sqlite", path, True)


def _schema_head() -> str | None:
    """The schema version this MLflow's SQL stores must have, from its migration scripts (no database)."""
    try:
        from mlflow.store.db.utils import _get_latest_schema_revision

        return _get_latest_schema_revision()
    except Exception:  # a private MLflow function: if it moves, skip the comparison rather than fail
        return None


def _file_store(uri: str) -> LocalStore:
    from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
    from mlflow.utils.file_utils import local_file_uri_to_path

    path = Path(os.path.abspath(local_file_uri_to_path(uri)))
    exists, problem = False, None
    if path.is_dir():
        entries = list(path.iterdir())
        exists = (path / ".trash").is_dir() or any(
            entry.name.isdigit() and (entry / "meta.yaml").is_file() for entry in entries
        )
        if entries and not exists:
            problem = f"{path} is a folder that is not an MLflow file store (no .trash, no experiment folder with meta.yaml)"
    elif path.exists():
        problem = f"{path} is a file, not a folder (for a SQLite store write sqlite:///{path})"
    try:
        allowed = MLFLOW_ALLOW_FILE_STORE.get()
    except ValueError:
        allowed = False
    if not allowed and problem is None:
        problem = (f"a file store, which MLflow 3 refuses unless MLFLOW_ALLOW_FILE_STORE=true; use a SQLite store, "
                   f"e.g. sqlite:///{path}.db")
    return LocalStore("file", path, exists, problem)


def resolve(spec_uri: str | None, experiment: str, sweep_dir: Path | None) -> Tracking:
    """Spec URI, else $MLFLOW_TRACKING_URI, else a SQLite store inside the (local) sweep folder."""
    uri = spec_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return Tracking(uri, experiment, None)
    assert sweep_dir is not None, "a sweep in object storage needs a tracking URI"
    return Tracking(f"sqlite:///{sweep_dir / 'mlflow.db'}", experiment, (sweep_dir / "mlartifacts").as_uri())


def ensure_experiment(tracking: Tracking) -> str:
    _seed_local_store(tracking)
    client = tracking.client()
    found = client.get_experiment_by_name(tracking.experiment)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(tracking.experiment, artifact_location=tracking.artifact_location)


def _seed_local_store(tracking: Tracking) -> None:
    """Start a sweep's own new SQLite store as a copy of an empty one MLflow set up once for its schema version.
    MLflow sets up each new database by running all of its schema migrations: seconds of CPU per sweep."""
    store = local_store(tracking.uri) if tracking.artifact_location is not None else None
    if store is None or store.kind != "sqlite" or store.path is None or store.path.exists():
        return
    template = _empty_store()
    if template is None:
        return  # MLflow sets the database up itself
    partial = store.path.with_name(f"{store.path.name}.partial-{uuid.uuid4().hex}")
    store.path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, partial)
    with closing(sqlite3.connect(partial)) as db, db:  # MLflow's Default experiment, in the sweep folder too
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                   (f"{tracking.artifact_location}/0",))
    os.replace(partial, store.path)


def _empty_store() -> Path | None:
    """An empty MLflow SQLite store of this MLflow's schema, made once per user in ~/.cache/banray (None where
    it cannot be: an unknown schema version, no writable cache)."""
    head = _schema_head()
    if head is None:
        return None
    cache = user_cache()
    template = cache / f"mlflow-store-{head}.db"
    found = local_store(f"sqlite:///{template}")
    if found.exists and found.problem is None:
        return template
    try:
        cache.mkdir(parents=True, exist_ok=True)
        partial = cache / f"{template.name}.partial-{uuid.uuid4().hex}"
        Tracking(f"sqlite:///{partial}", "", None).client().search_experiments()  # sets the tables up
        os.replace(partial, template)
    except OSError:
        return None
    return template


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings → flat dotted keys, the form MLflow params take."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def banray_tags(**values: Any) -> dict[str, str]:
    return {f"{TAG_PREFIX}{k}": "" if v is None else str(v) for k, v in values.items()}


def runs_link(base: str, experiment_id: str, chart: bool = False) -> str:
    """The MLflow UI at `base` on the experiment's training runs; with `chart`, in the chart view (one chart
    per metric, a line per chain over its generations)."""
    return f"{base.rstrip('/')}/{_runs_fragment(experiment_id, chart)}"


def _runs_fragment(experiment_id: str, chart: bool) -> str:
    # MLflow 3 opens an experiment on its GenAI overview unless the workflow type says otherwise.
    fragment = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return fragment + "&compareRunsMode=CHART" if chart else fragment


def run_link(experiment_id: str, run_id: str) -> str:
    """A run's link for the UI's markdown descriptions: relative, so it holds wherever the UI is served."""
    return f"#/experiments/{experiment_id}/runs/{run_id}"


def note(text: str) -> str:
    """A description as MLflow can store it (cut to its tag length limit)."""
    return text if len(text) <= NOTE_LIMIT else text[: NOTE_LIMIT - 40] + "\n\n… (cut: see report.md)"


def chain_run_name(chain: int, arm: str = MAIN_ARM) -> str:
    return f"chain{chain}" if arm == MAIN_ARM else f"chain{chain}-{arm}"


def group_tags(level: str, sweep: str, chain: int, generation: int, arm: str, role: str,
               **values: Any) -> dict[str, str]:
    """The tags of a generation's run (`level` "generation") or of one of its trials' runs ("trial"). A side
    arm's carry no `banray.generation`: grouping runs by generation must not put Teacher′ among the
    teachers."""
    place = {"generation": generation} if arm == MAIN_ARM else {}
    return banray_tags(sweep=sweep, chain=chain, **place, role=role, level=level, arm=arm,
                       column=report_column(generation, arm), **values)


def start_chain_run(tracking: Tracking, experiment_id: str, sweep: str, chain: int, arm: str, generations: int) -> str:
    """The run of a chain (or of one of its side arms) that its generations' runs are nested under."""
    columns = [report_column(g, arm) for g in range(generations + 1 if arm == MAIN_ARM else 1)]
    tags = banray_tags(sweep=sweep, chain=chain, role="chain", level="chain", arm=arm, column=", ".join(columns))
    return start_run(tracking, experiment_id, chain_run_name(chain, arm), {**tags, NOTE: chain_note(sweep, chain, arm)})


def chain_run_of(tracking: Tracking, run_id: str) -> str | None:
    """The chain run a generation's run is nested under (None for one made before chain runs existed)."""
    return tracking.client().get_run(run_id).data.tags.get(PARENT)


def _percent(fraction: float) -> float:
    """A fraction in %, without the float noise (7.000000000000001) the UI would show."""
    return round(100 * fraction, 9)


def scores(record) -> dict[str, float]:
    """A finished generation's scores in the report's units (errors and ECE in %), under the keys its chain's
    run logs them at step = generation."""
    values = {"val_error_pct": _percent(record.val_error), "test_error_pct": _percent(record.test_error),
              "test_nll": record.test_nll}
    if record.test_ece is not None:
        values["test_ece_pct"] = _percent(record.test_ece)
    return values


def log_scores(tracking: Tracking, record) -> None:
    """A generation's scores at step = generation, on its run and on its chain's (whose chart is the chain's line)."""
    client = tracking.client()
    for run_id in filter(None, (record.mlflow_run_id, chain_run_of(tracking, record.mlflow_run_id))):
        log_metrics(client, run_id, scores(record), step=record.generation)


def finish_chain_run(tracking: Tracking, experiment_id: str, sweep: str, records: list, stopped: str | None) -> None:
    """End the chain run of `records` (a chain's generations, or one side arm's), its description now
    with a row per generation; FAILED if none of them finished."""
    run_id = records and chain_run_of(tracking, records[0].mlflow_run_id)
    if not run_id:
        return
    arm = records[0].arm
    text = "\n\n".join([chain_note(sweep, records[0].chain, arm), _generations_table(experiment_id, arm, records),
                        *([f"Stopped: {stopped}."] if stopped else [])])
    client = tracking.client()
    client.set_tag(run_id, NOTE, note(text))
    client.set_terminated(run_id, "FINISHED" if any(r.status == "finished" for r in records) else "FAILED")


def chain_note(sweep: str, chain: int, arm: str) -> str:
    """What a chain run is."""
    if arm != MAIN_ARM:
        return (f"**{report_column(0, arm)}, a control arm of chain {chain}** (sweep `{sweep}`): {ARM_RECIPES[role(0, arm)]}"
                " Its scores at step 0; its generation's run is nested below.")
    return (f"**Chain {chain}** (sweep `{sweep}`): each generation's best validation and test scores at step = "
            "generation (0: the Teacher; k: BAN-k, distilled from generation k − 1), errors and ECE in %. Its "
            "generations' runs are nested below.")


def _generations_table(experiment_id: str, arm: str, records: list) -> str:
    """A row per generation: its step, column, scores in % and a link to its run."""
    def row(r) -> str:
        scores = f"{_pct(r.val_error)} | {_pct(r.test_error)}" if r.status == "finished" else "failed | —"
        link = f"[{group_name(r.chain, r.generation, arm)}]({run_link(experiment_id, r.mlflow_run_id)})"
        return f"| {r.generation} | {report_column(r.generation, arm)} | {scores} | {link} |"

    header = "| Step | Column | Validation error % | Test error % | Run |\n|---|---|---|---|---|"
    return "\n".join([header, *map(row, records)])


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def describe_experiment(tracking: Tracking, experiment_id: str, sweep: str) -> None:
    tracking.client().set_experiment_tag(experiment_id, NOTE, experiment_note(experiment_id, sweep))


def experiment_note(experiment_id: str, sweep: str) -> str:
    """How to read a sweep's experiment: where the chart is, which run is what."""
    chart = _runs_fragment(experiment_id, chart=True)
    return f"""**Born-again network chains of sweep `{sweep}`.** The [chart view]({chart}) draws one line per \
chain over its generations (step = generation: 0 is the Teacher, k is BAN-k): `test_error_pct`, \
`val_error_pct` (its best trial's, at the epoch it was selected at), `test_nll`, `test_ece_pct`; `summary` \
draws the mean over chains, `chain<c>-control` the control arm Teacher′ at step 0 (and `chain<c>-control2` …, \
`chain<c>-budget`, `chain<c>-smoothing` the further control arms, where the spec asks for them). Errors and ECE in %, lower is \
better.

| Run | `banray.level` | What it is |
|---|---|---|
| `summary` | sweep | the report (report.md, .json, .png, spec.yaml); at step k the mean over chains; \
`vs_teacher.*`: the last BAN, the largest ensemble and Teacher′ minus the same chain's Teacher, in points; \
every paired statistic in paired.json |
| `chain<c>` | chain | one chain: generation k's scores at step k |
| ↳ `chain<c>-gen<k>` | generation | generation k's search: its best trial on validation, evaluated once on the \
test split, its model |
| ↳ ↳ `chain<c>-gen<k>-trial<t>` | trial | one trial: its metrics per epoch |
| ↳ `chain<c>-ensembles` | chain | `Ens*k` (the last k generations' averaged outputs) and the control ensembles \
(`Teacher+Teacher′`: the Teacher and k − 1 teacher′s) on the test split |
| `chain<c>-control` | chain | the control arm: the teacher's recipe with a fresh seed (Teacher′) |
| ↳ `chain<c>-control-gen0` | generation | its search; its trials' runs below it |

Every run carries the tags `banray.level`, `banray.arm` (main, control, control2 …, budget, smoothing) and \
`banray.column` (the report \
column it fills: Teacher, BAN-1, Teacher′ …), e.g. ``tags.`banray.column` = 'BAN-1'`` in the search box. \
The chart view draws the first 10 runs of the list; with more chains pick "Show all runs" in the eye menu above it."""


def summary_note(sweep: str, table: str) -> str:
    """The summary run's description: the report's table (its caption, which says how to read it, is in report.md)."""
    return note(f"**Summary of sweep `{sweep}`**: the report's table; how to read it in report.md (under Artifacts, "
                "with report.json, report.png and spec.yaml), every paired statistic in paired.json (a table).\n\n"
                f"{table}")


def paired_table(result: dict[str, Any]) -> dict[str, list]:
    """Every paired statistic of the report, a row per comparison and metric, in the report's units (points for
    errors and ECE): the summary run's paired.json, which MLflow shows as a table."""
    from banray.results.report import DISPLAY

    rows = []
    section = result["paired"]
    primary = (section["primary"]["column"], section["primary"]["baseline"])
    pairs = [(c, "Teacher", by_metric) for c, by_metric in section["vs_teacher"].items()]
    pairs += [(c, section["own_baselines"][c], by_metric) for c, by_metric in section["vs_own_baseline"].items()]
    for column, baseline, by_metric in pairs:
        for metric, paired in by_metric.items():
            scale, unit, _ = DISPLAY[metric]
            scaled = {k: v if v is None or k not in ("mean", "std", "ci_low", "ci_high") else round(scale * v, 9)
                      for k, v in paired.items()}
            rows.append({"comparison": f"{column} − {baseline}", "metric": metric, "unit": unit,
                         "primary": (column, baseline) == primary, **scaled})
    return {key: [row[key] for row in rows] for key in (rows[0] if rows else {})}


def start_run(
    tracking: Tracking,
    experiment_id: str,
    run_name: str,
    tags: dict[str, str],
    params: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> str:
    from mlflow.entities import Param

    client = tracking.client()
    if parent_run_id:
        tags = {**tags, PARENT: parent_run_id}
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    if params:
        batch = [Param(k, _param_value(v)) for k, v in flatten(params).items()]
        for start in range(0, len(batch), 100):  # MLflow accepts at most 100 params per batch
            client.log_batch(run.info.run_id, params=batch[start : start + 100])
    return run.info.run_id


def _param_value(value: Any) -> str:
    """A param's value as MLflow can store it (cut to its length limit; the whole is in the sweep's records)."""
    text, cut = str(value), " … (cut: see report.json)"
    return text if len(text) <= PARAM_LIMIT else text[: PARAM_LIMIT - len(cut)] + cut


def start_or_resume_trial_run(
    tracking: Tracking,
    experiment_id: str,
    run_name: str,
    tags: dict[str, str],
    params: Mapping[str, Any],
    parent_run_id: str,
) -> str:
    """The run of the same trial number under the same generation run, set running again and tagged with the
    trial's current Tune trial id, if one exists (a trial restored by a resumed sweep, or started again from
    its own checkpoint when its group's Tune state was lost); else a new run."""
    client = tracking.client()
    trial = tags[f"{TAG_PREFIX}trial"]
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PARENT}` = '{parent_run_id}' and tags.`{TAG_PREFIX}trial` = '{trial}'",
    )
    if not found:
        return start_run(tracking, experiment_id, run_name, tags, params, parent_run_id)
    run_id = found[0].info.run_id
    tune_trial_id = f"{TAG_PREFIX}tune_trial_id"
    if found[0].data.tags.get(tune_trial_id) != tags[tune_trial_id]:
        client.set_tag(run_id, tune_trial_id, tags[tune_trial_id])
    return reopen_run(tracking, run_id)


def reopen_run(tracking: Tracking, run_id: str) -> str:
    """Set an interrupted run running again, so a resumed sweep continues it rather than duplicating it."""
    tracking.client().update_run(run_id, status="RUNNING")
    return run_id


def log_metrics(client, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    log_steps(client, run_id, [(k, v, step or 0) for k, v in metrics.items()])


def log_steps(client, run_id: str, metrics: list[tuple[str, float, int]]) -> None:
    """(key, value, step) triples, stamped now."""
    now = int(time.time() * 1000)
    log_rows(client, run_id, [(key, value, step, now) for key, value, step in metrics])


def metric_rows(metrics: Mapping[str, float], step: int) -> list[tuple[str, float, int, int]]:
    """(key, value, step, timestamp in ms) rows of metrics measured now, to log later with log_rows."""
    now = int(time.time() * 1000)
    return [(key, value, step, now) for key, value in metrics.items()]


def log_rows(client, run_id: str, rows: list[tuple[str, float, int, int]]) -> None:
    """(key, value, step, timestamp in ms) rows, in batches of MLflow's 1000 metrics at most."""
    from mlflow.entities import Metric

    batch = [Metric(key, float(value), timestamp, step) for key, value, step, timestamp in rows]
    for start in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[start : start + 1000])


def end_run(tracking: Tracking, run_id: str, status: str = "FINISHED") -> None:
    tracking.client().set_terminated(run_id, status=status)


_fluent_turn = threading.RLock()


@contextmanager
def _fluent(tracking: Tracking):
    """Point MLflow's fluent API at `tracking` for a moment. MLflow also exports the global tracking URI
    to os.environ (and so to every later subprocess): put back what was there. The fluent state is one per
    process, so its threads (the driver's groups, the evaluations' runner's calls) take turns: the fluent
    state's first, then one of the MLflow calls' bound, which the client calls made in the block use too (a
    thread waiting for the fluent state holds none of the bound's turns)."""
    import mlflow

    with _fluent_turn, mlflow_calls.turn():
        previous = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(tracking.uri)
        try:
            yield mlflow
        finally:
            mlflow.set_tracking_uri(previous)


def log_model(tracking: Tracking, run_id: str, model, input_example) -> str:
    """Log `model` as an MLflow PyTorch model of run `run_id`, retried as a whole through outages; returns its
    model URI."""
    return mlflow_calls.retried(f"logging the model of run {run_id}", _log_model, tracking, run_id, model,
                                input_example)


def _log_model(tracking: Tracking, run_id: str, model, input_example) -> str:
    import mlflow.pytorch

    # MLflow warns about pickle on every call; banray picks it knowingly (see below) and loads its own
    # checkpoints with weights_only=True, never through this model.
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    with _fluent(tracking) as mlflow, mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            # "pickle" loads back as the real nn.Module; pinning requirements skips an 8 s inference.
            serialization_format="pickle",
            pip_requirements=["torch==2.13.0", "banray"],
            input_example=input_example,
        )
    return info.model_uri


def promote(tracking: Tracking, name: str, version: str, alias: str = "best") -> None:
    """Point `alias` at `version` by hand, recording who did it and when on the version."""
    client = tracking.client()
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, f"{TAG_PREFIX}promoted_by", getpass.getuser())
    client.set_model_version_tag(name, version, f"{TAG_PREFIX}promoted_at", datetime.now(timezone.utc).isoformat())


def log_artifacts(tracking: Tracking, run_id: str, paths: list[Path]) -> None:
    client = tracking.client()
    for path in paths:
        client.log_artifact(run_id, str(path))


def register_generations(tracking: Tracking, name: str, records: list, metric: str,
                         experiment_id: str) -> dict[str, str]:
    """Register every finished generation's model as a version of registered model `name` (created once,
    if missing), each version described with its chain, column, scores and run.

    Aliases: `chain<c>-gen-<k>` for each version; `gen-<k>`, generation k of the chain with the lowest
    validation `metric`; `best`, the lowest over all generations (ties go to the earlier generation).
    Returns alias → version.
    """
    finished = [r for r in records if r.status == "finished" and r.model_uri]
    if not finished:
        return {}
    client = tracking.client()
    _ensure_registered_model(client, name, metric)
    # A local (SQL) store's registry finds a models:/ source through the global tracking URI.
    with _fluent(tracking):
        version = {(r.chain, r.generation): _create_version(client, name, r, metric, experiment_id) for r in finished}
    aliases = {f"chain{c}-gen-{k}": v for (c, k), v in version.items()}
    for k in sorted({r.generation for r in finished}):
        best_k = best_generation((r for r in finished if r.generation == k), metric)
        aliases[f"gen-{k}"] = version[best_k.chain, k]
    best = best_generation(finished, metric)
    aliases["best"] = version[best.chain, best.generation]
    for alias, v in aliases.items():
        client.set_registered_model_alias(name, alias, v)
    return aliases


def _ensure_registered_model(client, name: str, metric: str) -> None:
    """Create registered model `name` unless it exists: mlflow.register_model would say per version that it does."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        client.create_registered_model(name, description=(
            f"The generations of banray sweep `{name}`, a version per chain and generation. Aliases: `@best`, the "
            f"lowest validation `{metric}` of all; `@gen-<k>`, generation k of the chain lowest on it; "
            "`@chain<c>-gen-<k>`, each version."))


def _create_version(client, name: str, record, metric: str, experiment_id: str) -> str:
    """A version of registered model `name` from a generation's logged model, linked to its run."""
    return str(client.create_model_version(  # str: a SQL store's versions are ints, a server's strings
        name, record.model_uri, run_id=record.mlflow_run_id, model_id=record.model_uri.removeprefix("models:/"),
        tags=banray_tags(chain=record.chain, generation=record.generation, run_id=record.mlflow_run_id,
                         **{metric: getattr(record, metric)}),
        description=_version_note(name, record, metric, experiment_id),
        await_creation_for=0,  # MLflow's own registries create a version READY; waiting logs a line for each
    ).version)


def _version_note(name: str, record, metric: str, experiment_id: str) -> str:
    link = run_link(experiment_id, record.mlflow_run_id)
    return (f"Chain {record.chain}, {report_column(record.generation, 'main')} (generation {record.generation}) of "
            f"sweep `{name}`: validation error {_pct(record.val_error)}%, test error {_pct(record.test_error)}% "
            f"(the best of its trials on validation `{metric}`). [Its run]({link}).")
