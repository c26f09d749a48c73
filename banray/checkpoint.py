"""Checkpoints: weights as data plus the metadata that identifies and rebuilds the model.

A checkpoint directory holds `model.pt` (a state dict, loaded with `weights_only=True`) and Ray's
checkpoint metadata: arch, kwargs, num_classes, input_shape, spec hash, sweep, chain, generation,
trial, seed, epoch and validation metrics. A teacher is rebuilt from that metadata and checked
against what the chain expects, never recognised by its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.fs
import torch
from ray.train import Checkpoint
from torch import nn

from banray.models import build_model

WEIGHTS_FILE = "model.pt"

# Metadata keys that must match what the consumer of a teacher expects.
IDENTITY_KEYS = ("sweep", "spec_hash", "chain", "generation", "num_classes")


class TeacherMismatch(RuntimeError):
    pass


def save(directory: str | Path, model: nn.Module, metadata: dict[str, Any]) -> Checkpoint:
    torch.save(model.state_dict(), Path(directory) / WEIGHTS_FILE)
    checkpoint = Checkpoint.from_directory(str(directory))
    checkpoint.set_metadata(metadata)
    return checkpoint


def uri(checkpoint: Checkpoint) -> str:
    """A URI that any node can open; Ray strips the scheme from `Checkpoint.path` for remote filesystems."""
    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        return checkpoint.path
    return f"{checkpoint.filesystem.type_name}://{checkpoint.path}"


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
    model = build_model(
        metadata["arch"],
        num_classes=metadata["num_classes"],
        input_shape=tuple(metadata["input_shape"]),
        **metadata["kwargs"],
    )
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model, metadata


def identity(metadata: dict[str, Any]) -> dict[str, Any]:
    """The part of a checkpoint's metadata a student records about its teacher."""
    return {k: metadata[k] for k in (*IDENTITY_KEYS, "trial", "seed", "epoch", "arch", "val_error")}
