"""Checkpoints: weights as data plus the typed record that identifies and rebuilds the model.

A checkpoint directory holds `model.pt` (a state dict, loaded with `weights_only=True`) and its metadata
(`.metadata.json`, which Ray reads as the checkpoint's metadata), one CheckpointRecord: the model (arch, kwargs, the revision of its code, classes, input
shape), what it was trained on (dataset, the hash of its train/validation split), where in the sweep it comes
from (sweep, spec hash, chain, generation, arm, trial, seed) and its epoch with its validation metrics. A
teacher is rebuilt from that record and checked against the identity the chain expects, never recognised by
its path.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError
from torch import nn

from banray.catalog.models import MODELS, build_model
from banray.files import LOCAL, Refused, Storage
from banray.spec import Arm

WEIGHTS_FILE = "model.pt"
# The training state (epoch, optimizer, schedule, RNG states) a restarted trial goes on from.
TRAINING_STATE_FILE = "training_state.pt"
# Where ray.train.Checkpoint.set_metadata writes its metadata (json.dumps, UTF-8): written the same way here,
# so Ray sees a checkpoint's record as its metadata.
METADATA_FILE = ".metadata.json"
# The version of CheckpointRecord's fields; checkpoints from before the record (plain dicts) have none.
SCHEMA_VERSION = 1


class _Record(BaseModel):
    # Strict: metadata is read from files, and 4.0 or "4" classes are a damaged record, not 4.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ModelIdentity(_Record):
    """What rebuilds a model and which function it computes: its arch and kwargs, the revision of the arch's
    code (banray.catalog.models.registry) and the dataset's arguments."""

    arch: str
    kwargs: dict[str, Any]
    revision: PositiveInt
    num_classes: PositiveInt
    input_shape: list[PositiveInt] = Field(min_length=1)


class CheckpointIdentity(ModelIdentity):
    """Which model of which sweep a checkpoint holds, and on which data it was trained: what a teacher is
    checked against, field by field."""

    sweep: str
    spec_hash: str
    chain: NonNegativeInt
    generation: NonNegativeInt
    arm: Arm
    dataset: str
    split_hash: str  # banray.catalog.data.split_hash of its train/validation split


class TeacherReference(_Record):
    """What a student's checkpoint records of its teacher's."""

    sweep: str
    spec_hash: str
    chain: NonNegativeInt
    generation: NonNegativeInt
    trial: NonNegativeInt
    seed: int
    epoch: PositiveInt
    arch: str
    revision: PositiveInt
    num_classes: PositiveInt
    val_error: float


class CheckpointRecord(CheckpointIdentity):
    """A checkpoint's metadata: its identity, the trial and epoch that made it, and that epoch's metrics."""

    schema_version: int = SCHEMA_VERSION
    trial: NonNegativeInt
    seed: int
    objective: str
    teacher: TeacherReference | None  # generation − 1's checkpoint
    # distill.teacher_from 'ensemble': every member of the ensemble teacher, generation 0 first; else empty.
    teachers: list[TeacherReference] = []
    node_id: str  # provenance: which node trained it
    epoch: PositiveInt
    val_error: float
    val_nll: float

    def as_teacher(self) -> TeacherReference:
        """What a student taught by this checkpoint records of it."""
        return TeacherReference.model_validate(self.model_dump(include=set(TeacherReference.model_fields)))


class TeacherMismatch(RuntimeError):
    """A checkpoint whose metadata says it is not the teacher expected. A RuntimeError, not an OSError: storage
    retries re-raise it at once. Its message is one line, "checkpoint <uri>: ..."."""


class BadCheckpoint(RuntimeError):
    """A checkpoint banray refuses to load: a file missing or linked out of the checkpoint folder, metadata that
    is not a CheckpointRecord of this schema version describing a model the current code builds (within the
    parameter cap) as the function it was trained as, or a weights file that is not an intact state dict of
    plain tensors (unpickling anything else could run code). A RuntimeError, not an OSError: storage retries
    re-raise it at once. Its message is one line, "checkpoint <uri>: <what is wrong>"."""


def save(directory: str | Path, model: nn.Module, record: CheckpointRecord) -> None:
    torch.save(model.state_dict(), Path(directory) / WEIGHTS_FILE)
    (Path(directory) / METADATA_FILE).write_bytes(json.dumps(record.model_dump(mode="json")).encode("utf-8"))


def _one_line(text: str, limit: int = 300) -> str:
    """`text` on one line, cut to `limit` characters (metadata values and torch's messages can be long)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value: Any) -> str:
    return _one_line(repr(value), 200)


def _reason(exc: BaseException) -> str:
    """The first sentence of an exception, with its type: torch's messages run to pages of advice."""
    lines = str(exc).strip().splitlines()
    first = lines[0].split(". ")[0].rstrip(".") if lines else ""
    return _one_line(f"{type(exc).__name__}: {first}" if first else type(exc).__name__, 200)


def _bad(checkpoint_uri: str, what: str) -> BadCheckpoint:
    return BadCheckpoint(f"checkpoint {checkpoint_uri}: {' '.join(line.strip() for line in what.splitlines())}")


def _json(value: Any) -> Any:
    """`value` as it comes back from JSON (tuples become lists), for comparing with metadata."""
    return json.loads(json.dumps(value))


class _Files:
    """A checkpoint's files through `storage`: a file it refuses is a BadCheckpoint; storage errors (OSError)
    propagate, for the caller's `Storage.retried` to retry."""

    def __init__(self, checkpoint_uri: str, storage: Storage):
        self.uri, self._files = checkpoint_uri, storage.checkpoint_files(checkpoint_uri)

    def folder_exists(self) -> bool:
        return self._files.folder_exists()

    def read(self, name: str) -> bytes | None:
        """The bytes of file `name` of the checkpoint, or None if there is none."""
        try:
            return self._files.read(name)
        except Refused as exc:
            raise _bad(self.uri, str(exc)) from None


def _read_json(files: _Files) -> dict[str, Any]:
    """The checkpoint's metadata, checked to be a JSON object."""
    uri = files.uri
    raw = files.read(METADATA_FILE)
    if raw is None:
        if not files.folder_exists():
            raise _bad(uri, "there is no checkpoint folder there")
        raise _bad(uri, f"it has no metadata ({METADATA_FILE}); not a banray checkpoint")
    try:
        metadata = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _bad(uri, f"its metadata ({METADATA_FILE}) is not valid JSON ({_reason(exc)})") from None
    if not isinstance(metadata, dict):
        raise _bad(uri, f"its metadata ({METADATA_FILE}) is a JSON {type(metadata).__name__}, not an object")
    return metadata


def _schema_problem(metadata: dict[str, Any]) -> str | None:
    """Why the metadata is not of this banray's schema version, if it is not."""
    if "schema_version" not in metadata:
        return ("its metadata has no schema_version: not a banray checkpoint, or one written before its metadata "
                f"was a versioned record (this banray reads schema_version {SCHEMA_VERSION})")
    version = metadata["schema_version"]
    if version != SCHEMA_VERSION:  # 1.0 or true pass here, and the record's strict int refuses them
        return f"its metadata has schema_version={_short(version)}; this banray reads only {SCHEMA_VERSION}"
    return None


def _invalid(exc: ValidationError) -> str:
    """What is wrong with a record, every field named, on one line."""
    errors = exc.errors()
    missing = [_field(error) for error in errors if error["type"] == "missing"]
    messages = [(error, error["msg"].removeprefix("Value error, ")) for error in errors if error["type"] != "missing"]
    wrong = [f"{_field(error)}: {msg[0].lower()}{msg[1:]} (got {_short(error['input'])})" for error, msg in messages]
    return "its metadata is not a checkpoint record: " + "; ".join(
        ([f"it lacks {', '.join(missing)}"] if missing else []) + wrong
    )


def _field(error: dict[str, Any]) -> str:
    return ".".join(str(part) for part in error["loc"])


def _read_record(files: _Files) -> CheckpointRecord:
    """The checkpoint's record, parsed from its metadata; any problem with it is a BadCheckpoint."""
    metadata = _read_json(files)
    problem = _schema_problem(metadata)
    if problem is not None:
        raise _bad(files.uri, problem)
    try:
        return CheckpointRecord.model_validate(metadata)
    except ValidationError as exc:
        raise _bad(files.uri, _invalid(exc)) from None


def read_record(checkpoint_uri: str, storage: Storage = LOCAL) -> CheckpointRecord:
    """A checkpoint's record alone, without its weights; any problem with it is a BadCheckpoint."""
    return _read_record(_Files(checkpoint_uri, storage))


def read_tensors(checkpoint_uri: str, file: str, storage: Storage = LOCAL) -> Any:
    """File `file` of a checkpoint, loaded as data only. Fetching it raises storage errors (OSError), for the
    caller to retry; a missing or damaged file is a BadCheckpoint."""
    data = _Files(checkpoint_uri, storage).read(file)
    if data is None:
        raise _bad(checkpoint_uri, f"it has no {file}")
    return _decode_tensors(checkpoint_uri, data, file)


def _decode_tensors(checkpoint_uri: str, data: bytes, file: str = WEIGHTS_FILE) -> Any:
    """torch.load of a checkpoint file's bytes, as data only; any problem with them is a BadCheckpoint."""
    if not data:
        raise _bad(checkpoint_uri, f"{file} is empty")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses every global outside torch's allowlist before calling it; torch's own
        # message is a page of advice to load the file unsafely, so only its reason is kept.
        reason = (str(exc.__context__ or exc).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")
        raise _bad(
            checkpoint_uri,
            f"{file} holds something other than tensors ({_one_line(reason, 200)}); "
            "refused: checkpoints are loaded as data only",
        ) from None
    except Exception as exc:
        # A truncated zip makes torch's reader seek before the start of the file (OSError EINVAL from a file,
        # ValueError from bytes); other damage surfaces as RuntimeError, EOFError, KeyError, ...
        raise _bad(
            checkpoint_uri,
            f"{file} ({len(data):,} bytes) is not a readable torch.save file, truncated or damaged "
            f"({_reason(exc)})",
        ) from None


def load(
    checkpoint_uri: str, expected: CheckpointIdentity | None = None, storage: Storage = LOCAL
) -> tuple[nn.Module, CheckpointRecord]:
    """Rebuild the model of a checkpoint (read through `storage`) from its record; raise TeacherMismatch if it
    is not `expected`.

    Every problem with the checkpoint's contents (missing or misplaced files, metadata that is not a record of
    this schema version describing a model of the current code that builds with at most MAX_PARAMETERS
    parameters, weights that are not an intact state dict of that model) is a BadCheckpoint, a RuntimeError:
    `Storage.retried` re-raises it at once. Only errors while fetching the files from storage are OSErrors, which
    it retries as outages.
    """
    files = _Files(checkpoint_uri, storage)
    record = _read_record(files)
    if expected is not None:
        _check_identity(checkpoint_uri, record, expected)
    model = _build(checkpoint_uri, record)
    state = read_tensors(checkpoint_uri, WEIGHTS_FILE, storage)
    try:
        model.load_state_dict(state)
    except Exception as exc:  # RuntimeError for wrong keys or shapes, TypeError or AttributeError for a non-dict
        raise _bad(
            checkpoint_uri,
            f"{WEIGHTS_FILE} does not fit arch {record.arch!r} with kwargs {_short(record.kwargs)}: "
            f"{_one_line(str(exc), 200)}",
        ) from None
    return model, record


def _check_identity(checkpoint_uri: str, record: CheckpointRecord, expected: CheckpointIdentity) -> None:
    for name in CheckpointIdentity.model_fields:
        have, want = getattr(record, name), getattr(expected, name)
        if _json(have) != _json(want):  # kwargs as JSON: 0 and 0.0 are one value
            raise TeacherMismatch(
                f"checkpoint {checkpoint_uri}: its metadata has {name}={_short(have)}, expected {_short(want)}: "
                "it is not the teacher this generation was planned with"
            )


def _build(checkpoint_uri: str, record: CheckpointRecord) -> nn.Module:
    """The record's model with fresh weights, if the current code computes the function it was trained as."""
    arch, kwargs = record.arch, record.kwargs
    if arch not in MODELS:
        raise _bad(
            checkpoint_uri,
            f"its metadata names arch {_short(arch)}, which is not a registered model; "
            f"allowed: {', '.join(MODELS.names())}",
        )
    if record.revision != MODELS.revision(arch):
        raise _bad(
            checkpoint_uri,
            f"its metadata has revision={record.revision}, but the code of arch {arch!r} is at revision "
            f"{MODELS.revision(arch)}: it computes another function than the one these weights were trained as",
        )
    try:
        # Checked on the meta device first: kwargs asking for an absurd model are refused before allocating.
        return build_model(arch, num_classes=record.num_classes, input_shape=tuple(record.input_shape), **kwargs)
    except (TypeError, ValueError) as exc:  # what build_model raises, ModelTooLarge and ModelBuildError included
        reason = getattr(exc, "reason", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _bad(
            checkpoint_uri,
            f"arch {arch!r} cannot be built with its metadata's kwargs {_short(kwargs)}: {_one_line(reason, 300)}",
        ) from None
