"""Checkpoints: weights as data plus the metadata that identifies and rebuilds the model.

A checkpoint directory holds `model.pt` (a state dict, loaded with `weights_only=True`) and Ray's
checkpoint metadata: arch, kwargs, num_classes, input_shape, spec hash, sweep, chain, generation,
trial, seed, epoch and validation metrics. A teacher is rebuilt from that metadata and checked
against what the chain expects, never recognised by its path.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pyarrow.fs
import torch
from ray.train import Checkpoint
from torch import nn

from banray.models import MODELS, build_model

WEIGHTS_FILE = "model.pt"

# Metadata keys that must match what the consumer of a teacher expects.
IDENTITY_KEYS = ("sweep", "spec_hash", "chain", "generation", "num_classes")


class TeacherMismatch(RuntimeError):
    pass


class BadCheckpoint(RuntimeError):
    """A checkpoint banray refuses to load: its weights file is not plain tensors (unpickling it could run
    code), or its metadata does not describe a model banray can build. The message names the file and why."""


def save(directory: str | Path, model: nn.Module, metadata: dict[str, Any]) -> Checkpoint:
    torch.save(model.state_dict(), Path(directory) / WEIGHTS_FILE)
    checkpoint = Checkpoint.from_directory(str(directory))
    checkpoint.set_metadata(metadata)
    return checkpoint


def uri(checkpoint: Checkpoint) -> str:
    """A URI that any node can open; Ray strips the scheme from `Checkpoint.path` for remote filesystems."""
    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        return checkpoint.path
    # banray's retrying filesystem is a Python one named "py::<the filesystem it wraps>".
    scheme = checkpoint.filesystem.type_name.removeprefix("py::")
    return f"{scheme}://{checkpoint.path}"


def load(checkpoint_uri: str, expected: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint from its metadata; raise TeacherMismatch if it is not `expected`."""
    checkpoint = Checkpoint(checkpoint_uri)
    metadata = checkpoint.get_metadata()
    for key, want in (expected or {}).items():
        if metadata.get(key) != want:
            raise TeacherMismatch(
                f"checkpoint {checkpoint_uri} has {key}={metadata.get(key)!r}, expected {want!r}: "
                "it is not the teacher this generation was planned with"
            )
    missing = [key for key in ("arch", "kwargs", "num_classes", "input_shape") if key not in metadata]
    if missing:
        raise BadCheckpoint(
            f"checkpoint {checkpoint_uri}: its metadata lacks {', '.join(missing)}; not a banray checkpoint"
        )
    if metadata["arch"] not in MODELS:
        raise BadCheckpoint(
            f"checkpoint {checkpoint_uri}: its metadata names arch {metadata['arch']!r}, which is not a registered "
            f"model; allowed: {', '.join(MODELS.names())}"
        )
    try:
        model = build_model(
            metadata["arch"],
            num_classes=metadata["num_classes"],
            input_shape=tuple(metadata["input_shape"]),
            **metadata["kwargs"],
        )
    except (TypeError, ValueError) as exc:
        raise BadCheckpoint(
            f"checkpoint {checkpoint_uri}: arch {metadata['arch']!r} cannot be built with its metadata's kwargs "
            f"{metadata['kwargs']}: {exc}"
        ) from None
    with checkpoint.as_directory() as directory:
        try:
            state = torch.load(Path(directory) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # weights_only refuses every global outside torch's allowlist before calling it; torch's own
            # message is a page of advice to load the file unsafely, so only its reason is kept.
            reason = str(exc.__context__ or exc).strip().splitlines()[0].split(". ")[0].rstrip(".")
            raise BadCheckpoint(
                f"checkpoint {checkpoint_uri}: {WEIGHTS_FILE} holds something other than tensors ({reason}); "
                "refused: checkpoints are loaded as data only"
            ) from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise BadCheckpoint(
            f"checkpoint {checkpoint_uri}: {WEIGHTS_FILE} does not fit arch {metadata['arch']!r} with kwargs "
            f"{metadata['kwargs']}: {str(exc).strip().splitlines()[0]}"
        ) from None
    return model, metadata


def identity(metadata: dict[str, Any]) -> dict[str, Any]:
    """The part of a checkpoint's metadata a student records about its teacher."""
    return {k: metadata[k] for k in (*IDENTITY_KEYS, "trial", "seed", "epoch", "arch", "val_error")}
