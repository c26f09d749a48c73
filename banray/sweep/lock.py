"""One sweep per folder at a time: an exclusive lock beside the sweep folder, taken before anything is written.

Two drivers on one folder would race through the existence check, then one could delete or overwrite the
other's files. On local disk the lock is an OS file lock (flock) on `<root>/.<name>.lock`, which the OS
drops when its holder dies. Object storage has no locks: the lease object `<root>/.<name>.lease` names its
owner and a heartbeat that the holder renews every HEARTBEAT_S seconds; a lease not renewed for STALE_S
seconds is taken over (its holder is gone). Without conditional writes two drivers that start within
SETTLE_S of each other both write a lease; each reads it back after SETTLE_S and only the last writer goes on.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import getpass
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

from banray.storage import SweepStorage, refusal, with_retries

HEARTBEAT_S = 15.0
STALE_S = 120.0
SETTLE_S = 2.0


class SweepLocked(Exception):
    """Another sweep holds the folder; the message names it."""


def _owner() -> dict:
    return {
        "user": getpass.getuser(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "token": uuid.uuid4().hex,
        "heartbeat": time.time(),
    }


def _describe(owner: dict | None) -> str:
    if not owner:
        return "another sweep (it is still writing its name)"
    return f"another sweep (pid {owner.get('pid')} of {owner.get('user')} on {owner.get('host')}, since {owner.get('since')})"


def _refusal(storage: SweepStorage, owner: dict | None) -> SweepLocked:
    return SweepLocked(
        f"storage: {storage.uri} is in use by {_describe(owner)}; wait for it to end, or give this sweep "
        "another name or --storage"
    )


def _parse(data: bytes | None) -> dict | None:
    try:
        owner = json.loads(data) if data else None
    except ValueError:
        return None
    return owner if isinstance(owner, dict) else None


@contextlib.contextmanager
def hold(storage: SweepStorage) -> Iterator[None]:
    """Hold the sweep folder's lock for the block; SweepLocked at once if another sweep holds it."""
    parent, name = storage.path.rsplit("/", 1)
    if storage.remote:
        with _lease(storage, f"{parent}/.{name}.lease"):
            yield
    else:
        with _flock(storage, Path(parent) / f".{name}.lock"):
            yield


@contextlib.contextmanager
def _flock(storage: SweepStorage, path: Path) -> Iterator[None]:
    created = [p for p in [path.parent, *path.parent.parents] if not os.path.exists(p)]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # a folder the OS will not make there (below /proc, read-only): nothing is left behind
        _remove(created)
        raise refusal(exc, str(path)) from None
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse(os.pread(fd, 4096, 0))
            os.close(fd)
            raise _refusal(storage, holder) from None
        # The last holder removes the file as it lets go: if it did so while we opened it, lock the new one.
        if path.exists() and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_owner()).encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
        _remove(created)  # a sweep that wrote nothing leaves no empty folders behind


def _remove(folders: list[Path]) -> None:
    """Remove those of `folders` (deepest first) that are empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _read_lease(fs, path: str) -> dict | None:
    def fetch() -> bytes | None:
        try:
            with fs.open_input_stream(path) as stream:
                return stream.read()
        except FileNotFoundError:
            return None

    return _parse(with_retries(f"reading {path}", fetch))


@contextlib.contextmanager
def _lease(storage: SweepStorage, path: str) -> Iterator[None]:
    fs = storage.fs

    def read() -> dict | None:
        return _read_lease(fs, path)

    def write(owner: dict) -> None:
        def put() -> None:
            with fs.open_output_stream(path) as stream:
                stream.write(json.dumps(owner).encode())

        with_retries(f"writing {path}", put)

    current = read()
    if current is not None and time.time() - float(current.get("heartbeat", 0)) < STALE_S:
        raise _refusal(storage, current)
    mine = _owner()
    write(mine)
    time.sleep(SETTLE_S)
    current = read()
    if current is None or current.get("token") != mine["token"]:
        raise _refusal(storage, current)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(HEARTBEAT_S):
            if (read() or {}).get("token") != mine["token"]:
                return  # taken over (this driver stalled past STALE_S): never write over the new holder
            write({**mine, "heartbeat": time.time()})

    heartbeat = threading.Thread(target=renew, name="banray-lease", daemon=True)
    heartbeat.start()
    try:
        yield
    finally:
        stop.set()
        heartbeat.join()
        if (read() or {}).get("token") == mine["token"]:
            with contextlib.suppress(FileNotFoundError):
                with_retries(f"deleting {path}", lambda: fs.delete_file(path))


def held_by(storage: SweepStorage) -> dict | None:
    """The owner of the live lock on the sweep folder (its pid, user, host, since; {} if it has not written them
    yet), or None if no driver holds it. Only looks: a local lock is tried shared and let go at once, and a
    missing one is not created; a lease counts while its heartbeat is fresh."""
    parent, name = storage.path.rsplit("/", 1)
    if storage.remote:
        lease = _read_lease(storage.fs, f"{parent}/.{name}.lease")
        try:
            return lease if lease is not None and time.time() - float(lease.get("heartbeat", 0)) < STALE_S else None
        except (TypeError, ValueError):  # a heartbeat that is no number is no live holder's
            return None
    try:
        fd = os.open(Path(parent) / f".{name}.lock", os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _parse(os.pread(fd, 4096, 0)) or {}
    finally:
        os.close(fd)  # closing lets go of a shared lock taken above
    return None
