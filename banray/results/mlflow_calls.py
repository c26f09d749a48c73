"""The one bound on a process's MLflow calls, and their retries.

A sweep calls MLflow from many threads of one process: the driver's groups and their trial-run writers,
the evaluations' runner's calls (a thread per evaluation, a chain's ensembles each), the report. Each
call holds a connection of the store's SQLAlchemy pool (5 + 10 overflow by default) or of the HTTP
session; 32 chains' ensembles side by side once exhausted the pool (`QueuePool limit ... reached`) and
ended a sweep before its report. So every call goes through `call`: at most `calls_at_once()` of a
process's calls run at a time (BANRAY_MLFLOW_CALLS, default 4, read once per process), the SQL store's
pool has a connection for each, and a call that fails on something that passes (a locked SQLite store, a
pool timeout, a tracking server that is away, slow or answering 5xx after MLflow's own retries) is
retried with backoff for up to BANRAY_MLFLOW_RETRY_S seconds (default 300). `impatient_http` in
banray.results.tracking turns the retries off for commands a person waits on.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import tenacity

from banray.environment import set_variables
from banray.storage import RetryBudget, backoff

CALLS_VARIABLE = "BANRAY_MLFLOW_CALLS"
RETRY_BUDGET_VARIABLE = "BANRAY_MLFLOW_RETRY_S"
DEFAULT_CALLS = 4
# MLflow reads these when it creates a SQL store's engine, once per store URI and process.
POOL_SIZE_VARIABLE = "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"
SQLALCHEMY_POOL_SIZE = 5  # SQLAlchemy's default, which MLflow keeps unless POOL_SIZE_VARIABLE is set

logger = logging.getLogger(__name__)
T = TypeVar("T")

_TEMPORARILY_UNAVAILABLE = "TEMPORARILY_UNAVAILABLE"  # MLflow's error code for a database error that passes

_slots_made = threading.Lock()
_slots: threading.BoundedSemaphore | None = None
_held = threading.local()  # how deep the calling thread is in calls that hold its slot


def calls_at_once() -> int:
    return max(1, int(os.environ.get(CALLS_VARIABLE, DEFAULT_CALLS)))


MLFLOW_RETRY = RetryBudget(RETRY_BUDGET_VARIABLE)


def size_pool() -> None:
    """Give the SQL store's connection pool a connection per call of the bound, unless the environment sizes
    it: SQLAlchemy's default pool (5) already does for the default bound. MLflow's overflow (10) is left for
    a call that opens a second session."""
    if calls_at_once() > SQLALCHEMY_POOL_SIZE:
        set_variables({POOL_SIZE_VARIABLE: str(calls_at_once())}, keep_existing=True)


def _semaphore() -> threading.BoundedSemaphore:
    global _slots
    with _slots_made:
        if _slots is None:
            _slots = threading.BoundedSemaphore(calls_at_once())
        return _slots


@contextmanager
def turn() -> Iterator[None]:
    """One of the process's slots for the calling thread. A call made within the thread's turn (the fluent
    API's block, which calls the client) takes no second slot: a thread never waits on itself."""
    depth = getattr(_held, "depth", 0)
    if depth == 0:
        _semaphore().acquire()
    _held.depth = depth + 1
    try:
        yield
    finally:
        _held.depth = depth
        if depth == 0:
            _semaphore().release()


def passes(exc: BaseException) -> bool:
    """Whether an MLflow call's failure passes: MLflow wraps the database's and the HTTP client's errors,
    so the cause chain is what says. Imported here, on a failure: what imports banray.results.tracking need not
    pay for SQLAlchemy and requests."""
    import requests
    import sqlalchemy.exc

    # SQLite's "database is locked" and other OperationalErrors, a pool timeout; a tracking server that does not
    # answer in time, is away, or still answered 5xx when MLflow's own retries ran out.
    passing = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.TimeoutError, requests.ConnectionError,
               requests.Timeout, requests.exceptions.RetryError, requests.exceptions.ChunkedEncodingError)
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, passing) or getattr(seen, "error_code", None) == _TEMPORARILY_UNAVAILABLE:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def call(what: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`function(*args, **kwargs)` in a turn of the process's bound, retried as `retried` retries (the backoff
    outside the turn)."""

    def in_turn() -> T:
        with turn():
            return function(*args, **kwargs)

    return retried(what, in_turn)


def retried(what: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`function(*args, **kwargs)`, retried while it fails on what passes (jittered exponential backoff, 0.5 s
    up to 15 s) for up to the retry budget; `function` takes its own turn. A write retried after a server timed
    out may have been made: MLflow's own HTTP retries take that risk too."""
    wait = tenacity.wait_random_exponential(multiplier=0.5, max=15)
    return backoff(f"MLflow: {what}", passes, MLFLOW_RETRY.seconds(), wait, logger)(function, *args, **kwargs)


class BoundedClient:
    """An MlflowClient whose every method call goes through `call`."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # pickle asks for __setstate__ before _client is set
            raise AttributeError(name)
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute
        return functools.partial(call, name, attribute)
