"""Checkpoints: weights as data plus the metadata that identifies and rebuilds the model.

A checkpoint directory holds `model.pt` (a state dict, loaded with `weights_only=True`) and Ray's
checkpoint metadata: arch, kwargs, num_classes, input_shape, spec hash, sweep, chain, generation,
trial, seed, epoch and validation metrics. A teacher is rebuilt from that metadata and checked
against what the chain expects, never recognised by its path.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

import pyarrow.fs
import torch
from ray.train import Checkpoint
from torch import nn

from banray.models import MODELS, build_model

WEIGHTS_FILE = "model.pt"
METADATA_FILE = ".metadata.json"  # where ray.train.Checkpoint.set_metadata writes the metadata, as JSON
# The metadata keys that rebuild the model.
MODEL_KEYS = ("arch", "kwargs", "num_classes", "input_shape")

# Metadata keys that must match what the consumer of a teacher expects.
IDENTITY_KEYS = ("sweep", "spec_hash", "chain", "generation", "num_classes")


class TeacherMismatch(RuntimeError):
    """A checkpoint whose metadata says it is not the teacher expected. A RuntimeError, not an OSError: storage
    retries re-raise it at once. Its message is one line, "checkpoint <uri>: ..."."""


class BadCheckpoint(RuntimeError):
    """A checkpoint banray refuses to load: a file missing or linked out of the checkpoint folder, metadata that
    is not a JSON object describing a model banray can build (within the parameter cap), or a weights file that
    is not an intact state dict of plain tensors (unpickling anything else could run code). A RuntimeError, not
    an OSError: storage retries re-raise it at once. Its message is one line, "checkpoint <uri>: <what is wrong>"."""


def save(directory: str | Path, model: nn.Module, metadata: dict[str, Any]) -> Checkpoint:
    torch.save(model.state_dict(), Path(directory) / WEIGHTS_FILE)
    checkpoint = Checkpoint.from_directory(str(directory))
    checkpoint.set_metadata(metadata)
    return checkpoint


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


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class _Files:
    """Fetches a checkpoint's files as bytes. Storage errors (OSError) propagate, for the caller's
    with_retries to retry; a missing, misplaced or unreadable file is a BadCheckpoint."""

    def __init__(self, checkpoint_uri: str, checkpoint: Checkpoint):
        self.uri, self.checkpoint = checkpoint_uri, checkpoint
        self.local = isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem)

    def folder_exists(self) -> bool:
        if self.local:
            return Path(self.checkpoint.path).is_dir()
        return self.checkpoint.filesystem.get_file_info(self.checkpoint.path).type == pyarrow.fs.FileType.Directory

    def read(self, name: str) -> bytes | None:
        """The bytes of file `name` of the checkpoint, or None if there is none."""
        if self.local:
            return self._read_local(name)
        fs, path = self.checkpoint.filesystem, f"{self.checkpoint.path.rstrip('/')}/{name}"
        kind = fs.get_file_info(path).type
        if kind == pyarrow.fs.FileType.NotFound:
            return None
        if kind != pyarrow.fs.FileType.File:
            raise _bad(self.uri, f"{name} is not a file")
        try:
            with fs.open_input_stream(path) as stream:
                return stream.read()
        except FileNotFoundError:  # deleted since it was listed
            return None

    def _read_local(self, name: str) -> bytes | None:
        folder = Path(self.checkpoint.path).resolve()
        link = folder / name
        if not os.path.lexists(link):
            return None
        try:
            target = link.resolve()  # a link is followed only as far as it stays inside the checkpoint
        except (RuntimeError, OSError) as exc:  # a loop of links: RuntimeError up to Python 3.12, OSError after
            raise _bad(self.uri, f"{name} is a link that does not resolve ({_reason(exc)})") from None
        if not target.is_relative_to(folder):
            raise _bad(self.uri, f"{name} is a link to {target}, outside the checkpoint folder; refused")
        if not target.exists():
            raise _bad(self.uri, f"{name} is a dangling link")
        if not target.is_file():
            raise _bad(self.uri, f"{name} is not a regular file")
        try:
            return target.read_bytes()
        except PermissionError as exc:
            raise _bad(self.uri, f"{name} cannot be read ({exc.strerror})") from None


def _read_metadata(files: _Files) -> dict[str, Any]:
    """The checkpoint's Ray metadata (what `Checkpoint.set_metadata` wrote), checked to describe a model."""
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
    missing = [key for key in MODEL_KEYS if key not in metadata]
    if missing:
        raise _bad(uri, f"its metadata lacks {', '.join(missing)}; not a banray checkpoint")
    arch, kwargs, num_classes, input_shape = (metadata[key] for key in MODEL_KEYS)
    wrong = []
    if not isinstance(arch, str):
        wrong.append(f"arch must be a string, not {_short(arch)}")
    if not isinstance(kwargs, dict):
        wrong.append(f"kwargs must be an object of keyword arguments, not {_short(kwargs)}")
    if not _positive_int(num_classes):
        wrong.append(f"num_classes must be a positive integer, not {_short(num_classes)}")
    if not (isinstance(input_shape, list) and input_shape and all(_positive_int(size) for size in input_shape)):
        wrong.append(f"input_shape must be a non-empty list of positive integers, not {_short(input_shape)}")
    if wrong:
        raise _bad(uri, f"its metadata does not describe a model: {'; '.join(wrong)}")
    return metadata


def decode_tensors(checkpoint_uri: str, data: bytes, file: str = WEIGHTS_FILE) -> Any:
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


def load(checkpoint_uri: str, expected: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint from its metadata; raise TeacherMismatch if it is not `expected`.

    Every problem with the checkpoint's contents (missing or misplaced files, metadata that does not describe
    a buildable model of at most MAX_PARAMETERS parameters, weights that are not an intact state dict of that
    model) is a BadCheckpoint, a RuntimeError: `with_retries` re-raises it at once. Only errors while fetching
    the files from storage are OSErrors, which it retries as outages.
    """
    checkpoint = Checkpoint(checkpoint_uri)
    files = _Files(checkpoint_uri, checkpoint)
    metadata = _read_metadata(files)
    for key, want in (expected or {}).items():
        have = metadata.get(key)
        if _json(have) != _json(want):
            raise TeacherMismatch(
                f"checkpoint {checkpoint_uri}: its metadata has {key}={_short(have)}, expected {_short(want)}: "
                "it is not the teacher this generation was planned with"
            )
    arch, kwargs = metadata["arch"], metadata["kwargs"]
    if arch not in MODELS:
        raise _bad(
            checkpoint_uri,
            f"its metadata names arch {_short(arch)}, which is not a registered model; "
            f"allowed: {', '.join(MODELS.names())}",
        )
    try:
        # Checked on the meta device first: kwargs asking for an absurd model are refused before allocating.
        model = build_model(
            arch, num_classes=metadata["num_classes"], input_shape=tuple(metadata["input_shape"]), **kwargs
        )
    except (TypeError, ValueError) as exc:  # what build_model raises, ModelTooLarge and ModelBuildError included
        reason = getattr(exc, "reason", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _bad(
            checkpoint_uri,
            f"arch {arch!r} cannot be built with its metadata's kwargs {_short(kwargs)}: {_one_line(reason, 300)}",
        ) from None
    data = files.read(WEIGHTS_FILE)  # fetching: storage errors propagate (OSError) and are retried
    if data is None:
        raise _bad(checkpoint_uri, f"it has no {WEIGHTS_FILE}")
    state = decode_tensors(checkpoint_uri, data)  # decoding: every problem is a BadCheckpoint
    try:
        model.load_state_dict(state)
    except Exception as exc:  # RuntimeError for wrong keys or shapes, TypeError or AttributeError for a non-dict
        raise _bad(
            checkpoint_uri,
            f"{WEIGHTS_FILE} does not fit arch {arch!r} with kwargs {_short(kwargs)}: {_one_line(str(exc), 200)}",
        ) from None
    return model, metadata


def identity(metadata: dict[str, Any]) -> dict[str, Any]:
    """The part of a checkpoint's metadata a student records about its teacher."""
    return {k: metadata[k] for k in (*IDENTITY_KEYS, "trial", "seed", "epoch", "arch", "val_error")}
