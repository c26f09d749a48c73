"""Where a sweep's files live: a local folder or an s3:// URI, through pyarrow's filesystems (Ray's own).

`storage` in the spec is the root; a sweep writes under `<storage>/<name>/`: Ray Train checkpoints
(`train/`), Ray Tune state (`tune/`), the sweep state (`state.json`), the resolved spec and the report.
S3 credentials come only from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, or any other
source the AWS SDK reads); `storage_endpoint` (or AWS_ENDPOINT_URL_S3) points at MinIO or another
S3-compatible service.

`SWEEP_FILES` is the training core's storage (banray.files.Storage) as the Ray sessions hand it to
the loop: checkpoints and the teacher-logit cache on object storage through pyarrow, every access retried;
local folders through the core's own local files.

Object storage has outages: every read and write of banray's own (state, reports, checkpoint uploads
and downloads) is retried with exponential backoff for up to BANRAY_STORAGE_RETRY_S seconds (default
300), then fails with a StorageUnavailable error naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any, Callable, Iterator, TypeVar


import pyarrow as pa
import pyarrow.fs as pafs
import tenacity

from banray.environment import set_variables
from banray.files import LocalCacheFolder, LocalCheckpointFiles, Refused

MARKER_FILE = ".banray-sweep"  # written first into every sweep folder banray creates
STATE_FILE = "state.json"  # the sweep state the driver keeps current (banray.sweep.state), which `status` reads
REPORT_FILE = "report.json"  # the sweep's report, once it has finished
ENDPOINT_VARIABLE = "AWS_ENDPOINT_URL_S3"  # honoured by pyarrow, boto3 and MLflow's S3 artifact store
RETRY_BUDGET_VARIABLE = "BANRAY_STORAGE_RETRY_S"

logger = logging.getLogger(__name__)
T = TypeVar("T")


class StorageUnavailable(OSError):
    """Storage kept failing for the whole retry budget."""


class StorageRefused(OSError):
    """The OS refused a storage path for good (see refused): its message is one line naming the path and why."""


# The OS's answers that a path cannot be used as given: it lies below a file or in a filesystem that holds no
# folders of ours (/proc), its name is too long, it is not permitted or read-only. No retry changes them.
PATH_REFUSALS = frozenset({
    errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EACCES, errno.EPERM,
    errno.EROFS, errno.ELOOP,
})
_PATH_SHOWN = 160  # characters of a path a refusal shows: its start and its end


def refused(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in PATH_REFUSALS


def refusal(exc: OSError, path: str) -> StorageRefused:
    """The one line of an OS error of a storage path (creating, writing, renaming or listing it): the path the
    OS names (else `path`), shortened in the middle, and the OS's reason. pyarrow's own messages name the call
    and repeat the path; its errno says the same in words."""
    path = exc.filename or path
    if len(path) > _PATH_SHOWN:
        path = f"{path[:_PATH_SHOWN // 2]}…{path[-_PATH_SHOWN // 2:]}"
    reason = os.strerror(exc.errno) if exc.errno else " ".join(str(exc).split())
    refusal = StorageRefused(f"{path}: {reason}")
    refusal.errno = exc.errno
    return refusal


def _transient(exc: BaseException) -> bool:
    # pyarrow reports network and S3 service errors as OSError; a missing file is an answer, not an outage,
    # and a path the OS refuses stays refused.
    answers = (FileNotFoundError, StorageUnavailable)
    return isinstance(exc, OSError) and not isinstance(exc, answers) and not refused(exc)


class RetryBudget:
    """How long an outage is retried: the seconds the environment's `variable` sets, else a command's own
    (within `shortened`: a command a person waits on gives up sooner), else 300."""

    def __init__(self, variable: str):
        self.variable = variable
        self._commands: float | None = None

    def seconds(self) -> float:
        if self.variable in os.environ:
            return float(os.environ[self.variable])
        return self._commands if self._commands is not None else 300.0

    @contextlib.contextmanager
    def shortened(self, seconds: float) -> Iterator[None]:
        before, self._commands = self._commands, seconds
        try:
            yield
        finally:
            self._commands = before


STORAGE_RETRY = RetryBudget(RETRY_BUDGET_VARIABLE)


def backoff(what: str, passes: Callable[[BaseException], bool], budget_s: float, wait,
            log: logging.Logger) -> tenacity.Retrying:
    """banray's retry policy: retry while the failure `passes`, waiting `wait` between tries (from 0.5 s up to
    15 s), for up to `budget_s` seconds, each retry a warning on `log` naming `what`; then the last error."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(passes),
        wait=wait,
        stop=tenacity.stop_after_delay(budget_s),
        before_sleep=lambda state: log.warning(
            "%s failed (%s); retrying (attempt %d)", what, state.outcome.exception(), state.attempt_number
        ),
        reraise=True,
    )


def with_retries(what: str, call: Callable[[], T]) -> T:
    """`call()`, retried with exponential backoff (0.5 s doubling to 15 s) while storage errors are
    transient, for up to the retry budget; then StorageUnavailable naming `what`."""
    budget = STORAGE_RETRY.seconds()
    try:
        wait = tenacity.wait_exponential(multiplier=0.5, max=15)
        return backoff(f"storage: {what}", _transient, budget, wait, logger)(call)
    except OSError as exc:
        if refused(exc) and not isinstance(exc, (FileNotFoundError, StorageRefused)):
            raise refusal(exc, what) from exc
        if not _transient(exc):
            raise
        raise StorageUnavailable(
            f"storage: {what} kept failing for {budget:g} s ({RETRY_BUDGET_VARIABLE}): {exc}"
        ) from exc


def checkpoint_uri(checkpoint) -> str:
    """A URI of a `ray.train.Checkpoint` that any node can open; Ray strips the scheme from its path for
    remote filesystems."""
    # banray's retrying filesystem is a Python one named "py::<the filesystem it wraps>".
    scheme = checkpoint.filesystem.type_name.removeprefix("py::")
    return checkpoint.path if scheme == "local" else f"{scheme}://{checkpoint.path}"


def is_remote(uri: str) -> bool:
    return uri.startswith("s3://")


def use_endpoint(endpoint: str | None) -> dict[str, str]:
    """Point this process (and, through the returned env vars, Ray's workers) at an S3-compatible endpoint."""
    if endpoint:
        set_variables({ENDPOINT_VARIABLE: endpoint})
    value = os.environ.get(ENDPOINT_VARIABLE)
    return {ENDPOINT_VARIABLE: value} if value else {}


class _Upload(io.BytesIO):
    """A write stream that sends the whole object on close, retried as one unit. An object store replaces
    an object whole; a local file is written under a temporary name and renamed, so a process killed while
    writing never leaves half a file (Tune restoring from half an experiment state starts its run afresh,
    with trials that lack their settings)."""

    def __init__(self, fs: pafs.FileSystem, path: str):
        super().__init__()
        self.fs, self.path = fs, path

    def close(self) -> None:
        if not self.closed:
            data = self.getvalue()
            local = isinstance(self.fs, pafs.LocalFileSystem)

            def upload() -> None:
                target = f"{self.path}.partial-{uuid.uuid4().hex}" if local else self.path
                with self.fs.open_output_stream(target) as stream:
                    stream.write(data)
                if local:
                    self.fs.move(target, self.path)

            with_retries(f"writing {self.path}", upload)
        super().close()


class _RetryingHandler(pafs.FileSystemHandler):
    """A pyarrow filesystem whose every call is retried through storage outages. Ray Train and Tune write
    checkpoints, their snapshots and experiment state through it, which they do not retry themselves, and
    on a local disk not atomically. Reads fetch whole objects and writes upload whole objects on close, so
    each transfer retries as a unit and no reader sees half a file."""

    def __init__(self, fs: pafs.FileSystem):
        self.fs = fs

    def __eq__(self, other) -> bool:
        return isinstance(other, _RetryingHandler) and self.fs.equals(other.fs)

    def __ne__(self, other) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return self.fs.type_name

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        return with_retries(f"listing {paths[0] if paths else ''}", lambda: self.fs.get_file_info(paths))

    def get_file_info_selector(self, selector):
        return with_retries(f"listing {selector.base_dir}", lambda: self.fs.get_file_info(selector))

    def create_dir(self, path: str, recursive: bool) -> None:
        with_retries(f"creating {path}", lambda: self.fs.create_dir(path, recursive=recursive))

    def delete_dir(self, path: str) -> None:
        with_retries(f"deleting {path}", lambda: self.fs.delete_dir(path))

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        with_retries(f"emptying {path}", lambda: self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok))

    def delete_root_dir_contents(self) -> None:
        with_retries("emptying the root", lambda: self.fs.delete_dir_contents("/", accept_root_dir=True))

    def delete_file(self, path: str) -> None:
        with_retries(f"deleting {path}", lambda: self.fs.delete_file(path))

    def move(self, src: str, dest: str) -> None:
        with_retries(f"moving {src}", lambda: self.fs.move(src, dest))

    def copy_file(self, src: str, dest: str) -> None:
        with_retries(f"copying {src}", lambda: self.fs.copy_file(src, dest))

    def _read(self, path: str) -> pa.BufferReader:
        def read() -> bytes:
            with self.fs.open_input_stream(path) as stream:
                return stream.read()

        return pa.BufferReader(with_retries(f"reading {path}", read))

    def open_input_stream(self, path: str):
        return self._read(path)

    def open_input_file(self, path: str):
        return self._read(path)

    def open_output_stream(self, path: str, metadata):
        return pa.PythonFile(_Upload(self.fs, path), mode="w")

    def open_append_stream(self, path: str, metadata):
        raise NotImplementedError("appending to object storage is not supported")


def _endpoint_options() -> dict[str, str]:
    """The S3-compatible endpoint of use_endpoint as S3FileSystem's options (from_uri reads it from the
    environment; the constructor does not). Credentials come from the environment in both."""
    endpoint = os.environ.get(ENDPOINT_VARIABLE)
    if not endpoint:
        return {}
    parts = urlsplit(endpoint)
    return {"endpoint_override": parts.netloc, "scheme": parts.scheme or "https"}


def ray_storage(uri: str) -> tuple[str, pafs.FileSystem]:
    """(storage_path, storage_filesystem) for Ray Train's and Tune's RunConfig: through a filesystem that
    retries through outages and writes whole files (see _RetryingHandler), for object storage and local
    folders alike."""
    fs, path = pafs.FileSystem.from_uri(uri if is_remote(uri) else str(Path(uri).expanduser().resolve()))
    if isinstance(fs, pafs.S3FileSystem):
        # The handler's uploads run on pyarrow's IO threads (copy_files); S3's background writes would queue
        # nested tasks on that same pool and deadlock it once every IO thread waits in an upload.
        fs = pafs.S3FileSystem(region=fs.region, background_writes=False, **_endpoint_options())
    return path, pafs.PyFileSystem(_RetryingHandler(fs))


class NotAJsonObject(ValueError):
    """A sweep file holds JSON, but not the object it should."""


class SweepStorage:
    """The folder `<root>/<name>` of one sweep, local or in object storage."""

    def __init__(self, root: str, name: str):
        if not is_remote(root):
            root = str(Path(root).expanduser().resolve())
        self.uri = f"{root.rstrip('/')}/{name}"
        self.fs, self.path = pafs.FileSystem.from_uri(self.uri)

    @property
    def remote(self) -> bool:
        return is_remote(self.uri)

    def child(self, relative: str) -> str:
        """The URI of `relative` inside the sweep folder (what Ray's storage_path takes)."""
        return f"{self.uri}/{relative}"

    def check_reachable(self) -> None:
        """OSError unless the sweep folder could be created here: its bucket exists (object storage), or its
        nearest existing local ancestor is a folder this user can write into."""
        if self.remote:
            bucket = self.path.split("/")[0]
            if self.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise OSError(f"bucket '{bucket}' does not exist; create it first")
            return
        existing = Path(self.path)
        while not os.path.exists(existing) and existing != existing.parent:  # False, not an error, for a name too long
            existing = existing.parent
        if not existing.is_dir():
            raise OSError(f"{existing} is a file, not a folder")
        if existing == Path(self.path):
            return
        longest = os.pathconf(existing, "PC_NAME_MAX")
        for name in Path(self.path).relative_to(existing).parts:
            if len(os.fsencode(name)) > longest:
                raise refusal(OSError(errno.ENAMETOOLONG, "", f"{existing}/{name}"), self.path)
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OSError(f"{existing} is not writable by this user")

    def holds_anything(self) -> bool:
        """Whether the sweep folder exists with something in it; OSError if the storage is unreachable."""
        self.check_reachable()
        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            return False
        if info.type != pafs.FileType.Directory and not self.remote:
            raise OSError(f"{self.path} is a file, not a folder")
        return bool(self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True)))

    def why_not_a_sweep(self) -> str | None:
        """None if the folder carries banray's marks and (on local disk) belongs to this user; else why not.
        Only such a folder may be replaced (--overwrite) or resumed: anything else is someone's files."""
        if not (self.exists(MARKER_FILE) or (self.exists("spec.yaml") and self.exists(STATE_FILE))):
            return f"it holds files that are not a banray sweep's (no {MARKER_FILE}, spec.yaml or state.json)"
        if not self.remote and Path(self.path).stat().st_uid != os.getuid():
            return "it belongs to another user"
        return None

    def clear(self) -> None:
        if self.fs.get_file_info(self.path).type != pafs.FileType.NotFound:
            self.fs.delete_dir(self.path)

    def create(self, name: str) -> None:
        """Create the folder with banray's mark in it (what a later --overwrite checks for)."""
        self.fs.create_dir(self.path, recursive=True)
        self.write_json(MARKER_FILE, {"banray_sweep": name})

    def write_bytes(self, relative: str, data: bytes) -> str:
        """Write a file whole: readers never see half of it (an object store replaces an object whole; a
        local file is written under a temporary name, then renamed)."""
        final = f"{self.path}/{relative}"

        def write() -> None:
            if self.remote:
                with self.fs.open_output_stream(final) as stream:
                    stream.write(data)
                return
            temporary = f"{final}.partial-{uuid.uuid4().hex}"
            self.fs.create_dir(temporary.rsplit("/", 1)[0], recursive=True)
            with self.fs.open_output_stream(temporary) as stream:
                stream.write(data)
            self.fs.move(temporary, final)

        with_retries(f"writing {self.child(relative)}", write)
        return self.child(relative)

    def read_bytes(self, relative: str) -> bytes | None:
        """The file's bytes, or None if it does not exist."""

        def read() -> bytes | None:
            try:
                with self.fs.open_input_stream(f"{self.path}/{relative}") as stream:
                    return stream.read()
            except FileNotFoundError:
                return None

        return with_retries(f"reading {self.child(relative)}", read)

    def read_json(self, relative: str) -> dict[str, Any] | None:
        """The JSON object in the file (`state.json`, `report.json`), or None if there is none; a ValueError
        (NotAJsonObject for JSON of another kind) saying why if it is not one."""
        data = self.read_bytes(relative)
        if data is None:
            return None
        value = json.loads(data.decode())  # a JSONDecodeError or UnicodeDecodeError is a ValueError
        if not isinstance(value, dict):
            raise NotAJsonObject("not a JSON object")
        return value

    def read_text(self, relative: str) -> str | None:
        """The file's text, or None if it does not exist."""
        data = self.read_bytes(relative)
        return None if data is None else data.decode()

    def info(self, relative: str) -> pafs.FileInfo:
        return with_retries(f"checking {self.child(relative)}", lambda: self.fs.get_file_info(f"{self.path}/{relative}"))

    def exists(self, relative: str) -> bool:
        return self.info(relative).type != pafs.FileType.NotFound

    def write_text(self, relative: str, text: str) -> str:
        return self.write_bytes(relative, text.encode())

    def write_json(self, relative: str, value: Any) -> str:
        return self.write_text(relative, json.dumps(value, indent=2) + "\n")

    def local_dir(self) -> Path | None:
        return None if self.remote else Path(self.path)


class _ObjectCheckpointFiles:
    """A checkpoint folder in object storage (banray.files.CheckpointFiles)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.path = pafs.FileSystem.from_uri(uri)

    def folder_exists(self) -> bool:
        return self.fs.get_file_info(self.path).type == pafs.FileType.Directory

    def read(self, name: str) -> bytes | None:
        path = f"{self.path.rstrip('/')}/{name}"
        kind = self.fs.get_file_info(path).type
        if kind == pafs.FileType.NotFound:
            return None
        if kind != pafs.FileType.File:
            raise Refused(f"{name} is not a file")
        try:
            with self.fs.open_input_stream(path) as stream:
                return stream.read()
        except FileNotFoundError:  # deleted since it was listed
            return None


class _ObjectCacheFolder(SweepStorage):
    """A cache folder in object storage (banray.files.CacheFolder), every access retried. Claims
    are objects: two builders may race for one, and then write identical files."""

    def claim(self, name: str, stale_after_s: float) -> bool:
        info = self.info(f".claim-{name}")
        if info.type != pafs.FileType.NotFound and time.time() - info.mtime.timestamp() < stale_after_s:
            return False
        self.write_bytes(f".claim-{name}", b"")  # a new claim, or a stale one taken over with a fresh time
        return True

    def release(self, name: str) -> None:
        with contextlib.suppress(OSError):  # FileNotFoundError included
            self.fs.delete_file(f"{self.path}/.claim-{name}")


class SweepFiles:
    """The training core's storage on a sweep's storage: object storage through pyarrow, local folders
    through the core's local files; `retried` retries through outages (with_retries)."""

    def checkpoint_files(self, uri: str) -> _ObjectCheckpointFiles | LocalCheckpointFiles:
        return _ObjectCheckpointFiles(uri) if is_remote(uri) else LocalCheckpointFiles(uri)

    def cache_folder(self, root: str, name: str) -> _ObjectCacheFolder | LocalCacheFolder:
        return _ObjectCacheFolder(root, name) if is_remote(root) else LocalCacheFolder(root, name)

    def retried(self, what: str, call: Callable[[], T]) -> T:
        return with_retries(what, call)


SWEEP_FILES = SweepFiles()
