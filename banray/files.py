"""What the training core needs of storage, as an interface, and its implementation on local disk.

The loop reads a checkpoint's files by URI (a teacher, the checkpoint a restarted trial goes on from) and
keeps the teacher-logit cache in a folder of whole files with claims. `Storage` hands out both; the session
gives the loop its storage. `LOCAL` is plain os and pathlib; object storage (s3://, through pyarrow, every
access retried through outages) is banray.storage.SWEEP_FILES, which the Ray sessions hand the loop.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Callable, Protocol, TypeVar

T = TypeVar("T")


class Refused(Exception):
    """A checkpoint file banray will not read (not a file, linked out of its folder, unreadable): the message
    says what, naming the file; banray.training.checkpoint turns it into a BadCheckpoint."""


class CheckpointFiles(Protocol):
    """The files of one checkpoint folder. Storage errors are OSErrors (the caller's `Storage.retried`
    retries them); a misplaced or unreadable file is Refused."""

    uri: str

    def folder_exists(self) -> bool: ...

    def read(self, name: str) -> bytes | None:
        """The bytes of file `name`, or None if there is none."""


class CacheFolder(Protocol):
    """A folder of files written whole (a reader never sees half of one), with claims on files to build."""

    uri: str

    def exists(self, name: str) -> bool: ...

    def read_bytes(self, name: str) -> bytes | None: ...

    def write_bytes(self, name: str, data: bytes) -> object: ...

    def claim(self, name: str, stale_after_s: float) -> bool:
        """Whether this caller may build `name`: nobody claimed it, or its claim is older than `stale_after_s`."""

    def release(self, name: str) -> None:
        """Drop the claim on `name` (once its file is written)."""


class Storage(Protocol):
    def checkpoint_files(self, uri: str) -> CheckpointFiles: ...

    def cache_folder(self, root: str, name: str) -> CacheFolder:
        """The folder `<root>/<name>`."""

    def retried(self, what: str, call: Callable[[], T]) -> T:
        """`call()`, retried through storage outages where this storage has them."""


def local_path(uri: str) -> Path:
    """The local path of `uri`; object storage needs banray.storage (the full install)."""
    if "://" in uri:
        raise ValueError(f"{uri}: only local folders are read without banray's full install (banray.storage)")
    return Path(uri).expanduser().resolve()


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class LocalCheckpointFiles:
    """A checkpoint folder on local disk. A link is followed only as far as it stays inside the folder."""

    def __init__(self, uri: str):
        self.uri, self.folder = uri, local_path(uri)

    def folder_exists(self) -> bool:
        return self.folder.is_dir()

    def read(self, name: str) -> bytes | None:
        link = self.folder / name
        if not os.path.lexists(link):
            return None
        try:
            target = link.resolve()
        except (RuntimeError, OSError) as exc:  # a loop of links: RuntimeError up to Python 3.12, OSError after
            raise Refused(f"{name} is a link that does not resolve ({type(exc).__name__}: {_reason(exc)})") from None
        if not target.is_relative_to(self.folder):
            raise Refused(f"{name} is a link to {target}, outside the checkpoint folder; refused")
        if not target.exists():
            raise Refused(f"{name} is a dangling link")
        if not target.is_file():
            raise Refused(f"{name} is not a regular file")
        try:
            return target.read_bytes()
        except PermissionError as exc:
            raise Refused(f"{name} cannot be read ({exc.strerror})") from None


class LocalCacheFolder:
    """A cache folder on local disk: files written under a temporary name and renamed, claims created
    exclusively."""

    def __init__(self, root: str, name: str):
        self.path = local_path(root) / name
        self.uri = str(self.path)

    def exists(self, name: str) -> bool:
        return (self.path / name).exists()

    def read_bytes(self, name: str) -> bytes | None:
        try:
            return (self.path / name).read_bytes()
        except FileNotFoundError:
            return None

    def write_bytes(self, name: str, data: bytes) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        temporary = self.path / f"{name}.partial-{uuid.uuid4().hex}"
        temporary.write_bytes(data)
        os.replace(temporary, self.path / name)

    def claim(self, name: str, stale_after_s: float) -> bool:
        self.path.mkdir(parents=True, exist_ok=True)
        claim = self.path / f".claim-{name}"
        try:
            os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            pass
        try:
            if time.time() - claim.stat().st_mtime < stale_after_s:
                return False
        except FileNotFoundError:  # released meanwhile
            pass
        claim.touch()  # a stale claim taken over, with a fresh time
        return True

    def release(self, name: str) -> None:
        (self.path / f".claim-{name}").unlink(missing_ok=True)


class LocalStorage:
    """Local disk: an error is an answer, not an outage, so nothing is retried."""

    def checkpoint_files(self, uri: str) -> LocalCheckpointFiles:
        return LocalCheckpointFiles(uri)

    def cache_folder(self, root: str, name: str) -> LocalCacheFolder:
        return LocalCacheFolder(root, name)

    def retried(self, what: str, call: Callable[[], T]) -> T:
        return call()


LOCAL = LocalStorage()
