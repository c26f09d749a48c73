"""What `banray status`, `ls`, `report`, `ui` and `promote` read of a sweep: its progress, its best generation so
far, its report and its MLflow store, from its folder (spec.yaml, state.json, report.json, through SweepStorage)
on any machine that reaches the storage. Nothing here needs Ray; only `rerender` writes, and only whole files."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pyarrow.fs as pafs

from banray.sweep import lock

from banray.records import ChainResult, EnsembleRecord, GenerationRecord, arm_title
from banray.results import tracking
from banray.selection import best_generation
from banray.spec import SpecError, SweepSpec, cut, parse_spec, spec_document
from banray.storage import (
    MARKER_FILE,
    NotAJsonObject,
    REPORT_FILE,
    STORAGE_RETRY,
    STATE_FILE,
    StorageRefused,
    SweepStorage,
    is_remote,
    refusal,
    refused,
)

LOOK_RETRY_S = 10.0  # a command a person waits on gives up on unreachable storage in seconds, not minutes
T = TypeVar("T")


class NotASweep(Exception):
    """The location is missing, is not a sweep folder (or storage root), or its files cannot be read."""


class Unavailable(Exception):
    """Storage or MLflow failed for a well-formed request; the message names what and where."""


@contextlib.contextmanager
def impatient_storage() -> Iterator[None]:
    """Storage reads retried for LOOK_RETRY_S seconds (unless the environment sets its own budget); the errors a
    look at a sweep ends on, as NotASweep (the location is wrong) or Unavailable."""
    try:
        with STORAGE_RETRY.shortened(LOOK_RETRY_S):
            yield
    except StorageRefused as exc:  # a path the OS refuses: the location given is wrong
        raise NotASweep(str(exc)) from None
    except OSError as exc:  # an outage that outlasted the budget, a refused connection, a denied read
        raise Unavailable(f"storage: {' '.join(str(exc).split())}") from None


def _uri(location: str) -> str:
    return location.rstrip("/") if is_remote(location) else str(Path(location).expanduser().resolve())


def _folder(location: str) -> tuple[str, pafs.FileSystem, str]:
    """(URI, filesystem, path) of the folder at `location`; NotASweep if nothing, or a file, is there."""
    uri = _uri(location)
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except ValueError as exc:  # not a URI pyarrow knows; an unreachable one is an OSError, for the caller
        raise NotASweep(f"{location}: cannot open it ({' '.join(str(exc).split())})") from None
    kind = _look(uri, lambda: fs.get_file_info(path)).type
    if kind == pafs.FileType.NotFound:
        raise NotASweep(f"{uri}: no such folder")
    if kind != pafs.FileType.Directory:
        raise NotASweep(f"{uri}: a file, not a sweep folder or a storage root")
    return uri, fs, path


def _look(uri: str, call: Callable[[], T]) -> T:
    """`call()`, a look at `uri`; a path the OS refuses (a name too long, below a file) as StorageRefused."""
    try:
        return call()
    except OSError as exc:
        if refused(exc):
            raise refusal(exc, uri) from None
        raise


def _is_sweep(storage: SweepStorage) -> bool:
    """banray's mark, or spec.yaml beside state.json: what SweepStorage.why_not_a_sweep accepts."""
    return storage.exists(MARKER_FILE) or (storage.exists("spec.yaml") and storage.exists(STATE_FILE))


def as_sweep(location: str) -> SweepStorage | None:
    """The sweep folder at `location`, or None if it is a folder that is not one; NotASweep if nothing is there."""
    uri, _, path = _folder(location)
    if "/" not in path:  # a bucket is a root, never a sweep
        return None
    storage = SweepStorage(*uri.rsplit("/", 1))
    return storage if _is_sweep(storage) else None


def sweeps_under(location: str) -> list[SweepStorage]:
    """The sweep folders right under a storage root, by name; other folders and files are left out."""
    uri, fs, path = _folder(location)
    names = sorted(info.base_name for info in _look(uri, lambda: fs.get_file_info(pafs.FileSelector(path)))
                   if info.type == pafs.FileType.Directory)
    return [storage for storage in (SweepStorage(uri, name) for name in names) if _is_sweep(storage)]


@dataclass
class ChainState:
    """One chain as state.json has it."""

    records: list[GenerationRecord]
    running: dict[str, Any] | None
    stopped: str | None
    arms: dict[str, GenerationRecord]  # finished side arms, by arm
    arms_running: dict[str, float | None]  # running side arms → when each started


@dataclass
class Sweep:
    """One sweep folder as read: its spec, state (None before its first group started) and report, if any."""

    storage: SweepStorage
    spec: SweepSpec
    state: dict[str, Any] | None
    chains: dict[int, ChainState]
    report: dict[str, Any] | None
    started_at: float | None  # when spec.yaml was written: the sweep's first start
    holder: dict | None  # the driver holding the folder's lock, if one is alive

    @property
    def finished(self) -> bool:
        return bool(self.state and self.state.get("finished"))

    @property
    def status(self) -> str:
        if self.finished:
            return "finished"
        return "running" if self.holder is not None else "interrupted"


def _json_file(storage: SweepStorage, name: str) -> dict[str, Any] | None:
    try:
        return storage.read_json(name)
    except NotAJsonObject:
        raise NotASweep(f"{storage.child(name)}: not a banray {name} (not a JSON object)") from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise NotASweep(f"{storage.child(name)}: not readable JSON ({cut(str(exc), 80)})") from None


def _spec(storage: SweepStorage) -> SweepSpec:
    data = storage.read_bytes("spec.yaml")
    where = storage.child("spec.yaml")
    if data is None:
        raise NotASweep(f"{where}: missing, so the sweep's chains and generations are unknown")
    try:
        return parse_spec(spec_document(data, where), where)
    except SpecError as exc:
        raise NotASweep(exc.lines[0]) from None


def read_sweep(storage: SweepStorage) -> Sweep:
    """The sweep in `storage`, its state checked as the driver would read it back; NotASweep naming the file."""
    spec = _spec(storage)
    state = _json_file(storage, STATE_FILE)
    chains = _chains(state or {"chains": {}}, spec, storage.child(STATE_FILE))
    report = _json_file(storage, REPORT_FILE)
    mtime = storage.info("spec.yaml").mtime
    started = mtime.timestamp() if mtime is not None else (report or {}).get("started_at")
    holder = None if state and state.get("finished") else lock.held_by(storage)
    return Sweep(storage, spec, state, chains, report, started, holder)


def open_sweep(location: str) -> Sweep:
    storage = as_sweep(location)
    if storage is None:
        raise NotASweep(f"{_uri(location)}: not a sweep folder (no {MARKER_FILE}, or spec.yaml and {STATE_FILE})")
    return read_sweep(storage)


def _chains(state: dict[str, Any], spec: SweepSpec, where: str) -> dict[int, ChainState]:
    """state.json's chains, in the layout banray.sweep.state.SweepState.save writes."""
    try:
        chains = {chain: ChainState([], None, None, {}, {}) for chain in range(spec.chains)}
        for key, value in state["chains"].items():
            running, started = value["running"], value.get("arms_started_at") or {}
            if running is not None and not isinstance(running["generation"], int):
                raise TypeError(f"chain {key}'s running generation is {cut(repr(running['generation']), 40)}")
            chains[int(key)] = ChainState(
                [GenerationRecord(**r) for r in value["generations"]], running, value["stopped"],
                {arm: GenerationRecord(**r) for arm, r in value["arms"].items()},
                {arm: _number(started.get(arm)) for arm in value["arms_running"]},
            )
        return chains
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise NotASweep(f"{where}: not a readable sweep state ({type(exc).__name__}: {cut(str(exc), 80)})") from None


def _number(value: Any) -> float | None:
    """A time or duration from state.json, or None for anything that is not a number."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _record(record: GenerationRecord) -> dict[str, Any]:
    keep = ("generation", "status", "val_error", "val_nll", "test_error", "test_nll", "best_trial", "message")
    return {name: getattr(record, name) for name in keep}


def _best(records: list[GenerationRecord], metric: str) -> dict[str, Any] | None:
    """The finished generation of the lowest validation `metric`, the registry's rule: never chosen on test."""
    scored = [r for r in records if r.status == "finished" and getattr(r, metric) is not None]
    return _record(best_generation(scored, metric)) if scored else None


def _remaining(spec: SweepSpec, chain: ChainState) -> int:
    """The chain's groups not finished (running or to run)."""
    generations = 0 if chain.stopped else spec.generations + 1 - len(chain.records)
    return generations + len(_arms_left(spec, chain))


def _arms_left(spec: SweepSpec, chain: ChainState) -> list[str]:
    return [arm for arm in spec.side_arms() if arm not in chain.arms]


def _chain_status(spec: SweepSpec, number: int, chain: ChainState) -> dict[str, Any]:
    running = []
    if chain.running:
        running.append({"generation": chain.running["generation"], "started_at": _number(chain.running.get("started_at"))})
    running += [{"generation": arm, "started_at": since} for arm, since in chain.arms_running.items()]
    return {
        "chain": number,
        "generations_planned": spec.generations + 1,
        "generations_done": len(chain.records),
        "generations": [_record(r) for r in chain.records],
        "running": running,
        "best": _best(chain.records, spec.search.metric),
        "stopped": chain.stopped,
        "arms": {arm: _record(record) for arm, record in chain.arms.items()},
        "finished": _remaining(spec, chain) == 0,
    }


def _durations(sweep: Sweep) -> list[float]:
    """Seconds each finished group took: from the state's spans, else from a finished sweep's report."""
    def spans(groups: Any, start: str, end: str) -> list[tuple[Any, Any]]:
        groups = groups if isinstance(groups, list) else []
        return [(_number(g.get(start)), _number(g.get(end))) for g in groups if isinstance(g, dict)]

    found = spans((sweep.state or {}).get("groups"), "started_at", "ended_at")
    if not found and sweep.report:
        found = spans(sweep.report.get("groups"), "start_s", "end_s")
    return [end - start for start, end in found if start is not None and end is not None]


def _seconds_left(spec: SweepSpec, chain: ChainState, mean: float, now: float | None) -> tuple[float, float]:
    """(the chain's work left, its generations left end to end, which run one after another), each group the
    mean group's duration, a running one less what it has run (`now` None: nothing runs, groups count whole)."""
    def rest(started_at: float | None) -> float:
        return mean if now is None or started_at is None else max(0.0, mean - (now - started_at))

    generations = 0 if chain.stopped else spec.generations + 1 - len(chain.records)
    path = 0.0
    if generations:
        path = (rest(_number(chain.running.get("started_at"))) if chain.running else mean) + mean * (generations - 1)
    arms = sum(rest(chain.arms_running[arm]) if arm in chain.arms_running else mean for arm in _arms_left(spec, chain))
    return path + arms, path


def _groups(sweep: Sweep, now: float) -> tuple[dict[str, Any], float | None]:
    """How many groups are done and left, and the ETA: the work left (the mean finished group's duration per
    group left) over the groups that run at once, but never less than the longest chain's generations left
    end to end. None while no group has finished: there is nothing to go by."""
    spec, chains = sweep.spec, sweep.chains
    at_once = _number((sweep.state or {}).get("groups_at_once")) or spec.chains
    durations = _durations(sweep)
    mean = sum(durations) / len(durations) if durations else None
    eta = 0.0 if sweep.finished else None
    if mean is not None and not sweep.finished:
        left = [_seconds_left(spec, c, mean, now if sweep.status == "running" else None) for c in chains.values()]
        eta = max(sum(work for work, _ in left) / at_once, max(path for _, path in left))
    groups = {
        "total": spec.chains * (spec.generations + 1 + len(spec.side_arms())),
        "done": sum(len(c.records) + len(c.arms) for c in chains.values()),
        "remaining": sum(_remaining(spec, c) for c in chains.values()),
        "skipped": sum(spec.generations + 1 - len(c.records) for c in chains.values() if c.stopped),
        "at_once": at_once, "mean_s": mean,
    }
    return groups, eta


def status(sweep: Sweep, now: float | None = None) -> dict[str, Any]:
    """Everything `banray status` shows of one sweep, as plain values (its --json output), as of `now`."""
    now = time.time() if now is None else now
    groups, eta = _groups(sweep, now)
    holder = {k: sweep.holder.get(k) for k in ("pid", "user", "host", "since")} if sweep.holder else None
    return {
        "sweep": sweep.spec.name,
        "location": sweep.storage.uri,
        "status": sweep.status,
        "at": now,
        "started_at": sweep.started_at,
        "driver": holder,
        "metric": sweep.spec.search.metric,
        "chains": [_chain_status(sweep.spec, number, chain) for number, chain in sorted(sweep.chains.items())],
        "groups": groups,
        "eta_s": eta,
        "makespan_s": (sweep.report or {}).get("elapsed_s") if sweep.finished else None,
    }


def summary(storage: SweepStorage) -> dict[str, Any]:
    """One sweep of a storage root in a line: `banray ls`; a sweep whose files cannot be read says why."""
    try:
        found = status(read_sweep(storage))
    except NotASweep as exc:
        return {"name": storage.uri.rsplit("/", 1)[1], "location": storage.uri, "status": "unreadable",
                "problem": str(exc)}
    return {
        "name": found["sweep"], "location": found["location"], "status": found["status"],
        "chains": len(found["chains"]),
        "generations_done": sum(c["generations_done"] for c in found["chains"]),
        "generations_planned": sum(c["generations_planned"] for c in found["chains"]),
        "started_at": found["started_at"],
    }


def when(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _value(name: str, value: float | None) -> str:
    if value is None:
        return f"{name} —"
    return f"{name} {100 * value:.2f}%" if name.endswith("error") else f"{name} {value:.3f}"


def _scores(record: dict[str, Any], metric: str) -> str:
    if record["status"] != "finished":
        return f"{record['status']}: {record['message'] or 'no reason recorded'}"
    test = "test_error" if record["test_error"] is not None or record["test_nll"] is None else "test_nll"
    evaluated = record[test] is not None
    return f"{_value(metric, record[metric])}, " + (_value(test, record[test]) if evaluated else "not evaluated on test yet")


def _running_line(group: dict[str, Any], now: float, running: bool) -> str:
    what = arm_title(group["generation"]) if isinstance(group["generation"], str) else f"generation {group['generation']}"
    if group["started_at"] is None:
        return f"{what} (start time not recorded)"
    if not running:
        return f"{what} (started {when(group['started_at'])})"
    return f"{what} since {when(group['started_at'])} ({duration(now - group['started_at'])})"


def _chain_lines(chain: dict[str, Any], metric: str, sweep_status: str, now: float) -> list[str]:
    head = f"  chain {chain['chain']}: {chain['generations_done']} of {chain['generations_planned']} generation(s) done"
    if chain["stopped"]:
        head += f"; stopped early: {chain['stopped']}"
    if chain["running"]:
        running = sweep_status == "running"
        head += "; running " if running else "; interrupted in "
        head += " and ".join(_running_line(g, now, running) for g in chain["running"])
    best = chain["best"]
    label = "best" if chain["finished"] else "best so far"
    head += f"; {label} by {metric}: " + (f"generation {best['generation']} ({_scores(best, metric)})" if best
                                           else "none yet")
    lines = [head]
    lines += [f"    generation {g['generation']}: {_scores(g, metric)}" for g in chain["generations"]]
    lines += [f"    {arm_title(arm)}: {_scores(record, metric)}" for arm, record in chain["arms"].items()]
    return lines


def status_lines(found: dict[str, Any]) -> list[str]:
    now = found["at"]
    driver = found["driver"]
    head = f"Sweep '{found['sweep']}' in {found['location']}: {found['status']}"
    if driver and driver["pid"]:
        head += f" (driver pid {driver['pid']} of {driver['user']} on {driver['host']})"
    lines = [head + f"; started {when(found['started_at'])}"]
    for chain in found["chains"]:
        lines += _chain_lines(chain, found["metric"], found["status"], now)
    groups = found["groups"]
    tail = f"Groups: {groups['done']} of {groups['total']} done"
    if groups["skipped"]:
        tail += f", {groups['skipped']} skipped by chains that stopped early"
    if found["status"] == "finished":
        makespan = found["makespan_s"]
        lines.append(tail + (f"; finished, makespan {duration(makespan)}" if makespan is not None else "; finished"))
    elif found["eta_s"] is None:
        lines.append(tail + "; ETA unknown (no group has finished yet)")
    else:
        basis = (f"mean group {duration(groups['mean_s'])}, {groups['remaining']} group(s) left, "
                 f"up to {groups['at_once']} at once")
        if found["status"] == "running":
            lines.append(tail + f"; ETA about {duration(found['eta_s'])} ({basis})")
        else:
            lines.append(tail + f"; about {duration(found['eta_s'])} left once resumed ({basis}; "
                         "`banray sweep SPEC --resume` continues it)")
    return lines


def listing_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The sweeps of a storage root as a table, one line each."""
    table = [("NAME", "STATUS", "CHAINS", "GENERATIONS", "STARTED")]
    for row in rows:
        if row["status"] == "unreadable":
            table.append((row["name"], "unreadable", "-", "-", row["problem"]))
            continue
        generations = f"{row['generations_done']}/{row['generations_planned']}"
        table.append((row["name"], row["status"], str(row["chains"]), generations, when(row["started_at"])))
    widths = [max(len(line[i]) for line in table) for i in range(4)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line[:4], widths)) + "  " + line[4] for line in table]


def store_problem(uri: str) -> str | None:
    """Why `uri` cannot be opened as an MLflow store, looked at without creating anything (MLflow's client
    would create a missing local store); None if it can."""
    if uri.startswith(("http://", "https://")):
        return tracking.server_problem(uri)
    store = tracking.local_store(uri)
    if store is not None and not store.exists:
        at = f"{store.path} ({uri})" if store.path else uri
        return f"no MLflow store at {at}" + (f": {store.problem}" if store.problem else "")
    if store is not None and store.problem:
        return f"{uri}: {store.problem}"
    return None


def tracking_uri(sweep: Sweep) -> str | None:
    """Where the sweep tracked: the SQLite store in its own folder if it has one (only a sweep given no tracking
    URI makes one, tracking.resolve; found there even if the folder has moved since), else what its report
    records, else its spec's tracking.uri; None if none says (it ran with $MLFLOW_TRACKING_URI, unfinished)."""
    folder = sweep.storage.local_dir()
    if folder is not None and (folder / "mlflow.db").is_file():
        return f"sqlite:///{folder / 'mlflow.db'}"
    recorded = ((sweep.report or {}).get("mlflow") or {}).get("tracking_uri")
    if isinstance(recorded, str) and recorded:
        return recorded
    return sweep.spec.tracking.uri


def experiment_name(sweep: Sweep) -> str:
    return sweep.spec.tracking.experiment or sweep.spec.name


def _chain_results(report_data: dict[str, Any], where: str) -> list[ChainResult]:
    """The chains of a report.json as the records report.build takes."""
    try:
        return [
            ChainResult(
                c["chain"], [GenerationRecord(**g) for g in c["generations"]],
                [EnsembleRecord(**e) for e in c["ensembles"]], c["ensemble_run_id"], c["stopped"],
                arms={arm: GenerationRecord(**r) for arm, r in c["arms"].items()},
                control_ensembles=[EnsembleRecord(**e) for e in c["control_ensembles"]],
            )
            for c in report_data["chains"]
        ]
    except (KeyError, TypeError) as exc:
        raise NotASweep(f"{where}: not a banray report ({type(exc).__name__}: {cut(str(exc), 80)})") from None


def registry_aliases(uri: str, name: str, recorded: dict[str, str]) -> dict[str, str]:
    """The aliases of registered model `name` as MLflow holds them now (after `banray promote`), in the order the
    report recorded them; Unavailable if the store cannot be asked."""
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    problem = store_problem(uri)
    if problem:
        raise Unavailable(f"MLflow: {problem}")
    with tracking.impatient_http():
        try:
            model = tracking.Tracking(uri, name, None).client().get_registered_model(name)
            current = {alias: str(version) for alias, version in model.aliases.items()}  # a SQL store's are ints
        except (MlflowException, requests.RequestException, sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
            why = exc.message if isinstance(exc, MlflowException) else f"{type(exc).__name__}: {exc}"
            raise Unavailable(f"MLflow: registered model '{name}' at {uri}: {' '.join(str(why).split())}") from None
    ordered = {alias: current[alias] for alias in recorded if alias in current}
    return {**ordered, **{alias: v for alias, v in current.items() if alias not in ordered}}


def rerender(sweep: Sweep) -> list[str]:
    """Build the finished sweep's report again from its report.json, with the registry's aliases as MLflow holds
    them now, and write report.json, .md and .png whole into its folder; returns their URIs."""
    from banray.results import report
    from banray.sweep.dag import GroupSpan

    where = sweep.storage.child(REPORT_FILE)
    if not sweep.finished:
        raise NotASweep(f"{sweep.storage.uri}: the sweep has not finished ({sweep.status}); "
                        "`banray status` shows how far it is")
    if sweep.report is None:
        raise NotASweep(f"{where}: missing, though state.json says the sweep finished")
    old = sweep.report
    chains = _chain_results(old, where)
    try:
        mlflow_info, spans = old["mlflow"], [GroupSpan(**g) for g in old.get("groups") or []]
        registry = mlflow_info.get("registered_model") or {"name": sweep.spec.name, "aliases": {}}
        if registry["aliases"]:
            store = tracking_uri(sweep) or mlflow_info["tracking_uri"]
            registry = {**registry, "aliases": registry_aliases(store, registry["name"], registry["aliases"])}
        result = report.build(
            sweep.spec, chains, sweep_dir=old["sweep_dir"], tracking_uri=mlflow_info["tracking_uri"],
            experiment_id=mlflow_info["experiment_id"], elapsed_s=old["elapsed_s"], utilisation=old.get("utilisation"),
            spans=spans, registry=registry, started_at=old.get("started_at"),
        ) | {"spec_hash": sweep.state["spec_hash"]}  # what was trained, though a newer banray may hash specs otherwise
    except (KeyError, TypeError, AttributeError) as exc:
        raise NotASweep(f"{where}: not a banray report ({type(exc).__name__}: {cut(str(exc), 80)})") from None
    with tempfile.TemporaryDirectory() as folder:
        files = report.write(result, Path(folder))
        contents = [(f.name, f.read_bytes()) for f in files]  # all rendered before any is replaced
    return [sweep.storage.write_bytes(name, data) for name, data in contents]


def experiment_id(base: str, name: str) -> str:
    """The id of experiment `name` on the MLflow server at `base`, through its REST API."""
    import requests

    answer = requests.get(f"{base.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name",
                          params={"experiment_name": name}, timeout=tracking.HEALTH_TIMEOUT_S)
    if answer.status_code == 404:
        raise NotASweep(f"MLflow at {base} has no experiment '{name}'")
    if answer.status_code != 200:
        raise Unavailable(f"MLflow at {base}: looking up experiment '{name}' answered HTTP {answer.status_code}")
    return answer.json()["experiment"]["experiment_id"]


def port_taken(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _wait_healthy(server: subprocess.Popen, base: str, log: Path, timeout_s: float = 300) -> None:
    """Until the server's /health answers; Unavailable with its last error line if it exits first."""
    deadline = time.monotonic() + timeout_s
    while tracking.server_problem(base, timeout=2) is not None:
        if server.poll() is not None:
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            errors = [line for line in lines if "ERROR" in line or "Error" in line] or lines or ["no output"]
            raise Unavailable(f"the MLflow server exited ({server.returncode}): {cut(errors[-1].strip(), 200)}")
        if time.monotonic() > deadline:
            raise Unavailable(f"the MLflow server did not answer at {base} within {timeout_s:.0f} s")
        time.sleep(0.5)


def _stop(server: subprocess.Popen) -> None:
    """End the server with every process it started (its own session), SIGKILL after 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the UI the way Ctrl-C does: the server goes with it


def serve(uri: str, experiment: str, known_id: str | None, port: int, echo: Callable[[str], None]) -> None:
    """`mlflow server` on store `uri`, bound to 127.0.0.1:`port`, until Ctrl-C or SIGTERM; prints the link to
    the experiment's training runs once the server answers."""
    base = f"http://127.0.0.1:{port}"
    store = tracking.local_store(uri)
    if store is not None and store.path is not None:  # the server runs in a folder of its own: no relative paths
        uri = f"sqlite:///{store.path}" if store.kind == "sqlite" else store.path.as_uri()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
                                                                               "false")}  # no job runners to reap
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with tempfile.TemporaryDirectory(prefix="banray-ui-") as folder:
            log = Path(folder) / "mlflow-server.log"
            with open(log, "w") as output:
                server = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=folder,
                                          start_new_session=True)
            try:
                _wait_healthy(server, base, log)
                echo(f"MLflow UI on {uri} (server pid {server.pid}); Ctrl-C stops it")
                echo(tracking.runs_link(base, known_id or experiment_id(base, experiment)))
                server.wait()
                raise Unavailable(f"the MLflow server exited by itself ({server.returncode})")
            except KeyboardInterrupt:
                echo("Stopping the MLflow server")
            finally:
                _stop(server)
    finally:
        signal.signal(signal.SIGTERM, previous)
