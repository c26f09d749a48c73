"""Where the epoch loop runs, behind one small interface (Session), and the plainest place it runs: this
process, no engine (LocalSession). The engines' sessions (Ray Train, a Tune trial, a warm host) are
banray.trial.sessions' and banray.trial.hosts'.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import nn

from banray.files import LOCAL, Storage


class Session(Protocol):
    rank: int
    world_size: int
    storage: Storage  # where the loop reads checkpoints and keeps the teacher-logit cache
    node_id: str  # provenance, recorded in every checkpoint: which machine trained it

    def device(self) -> torch.device: ...

    def prepare_model(self, model: nn.Module) -> nn.Module: ...

    def restored(self) -> str | None:
        """The URI of this trial's last checkpoint, if it is being restarted."""

    def report(self, metrics: dict, directory: str | None) -> str | Future | None:
        """Report one epoch's metrics, with the checkpoint in `directory` if given; returns the URI the
        checkpoint was stored at where the engine says, or a Future of it where it stores it later (None
        otherwise). The folder is the caller's again once this returns."""


@contextmanager
def checkpoint_folder(wanted: bool) -> Iterator[str | None]:
    """A temporary folder to write a checkpoint into, or None when this epoch reports none."""
    if not wanted:
        yield None
        return
    with tempfile.TemporaryDirectory() as directory:
        yield directory


class LocalSession:
    """One worker in this process, no engine: each checkpoint is kept as `<folder>/epoch-<epoch>` (copied
    whole under a temporary name, then renamed), and each epoch's report, with its wall time and training
    samples per second, goes to `on_epoch` if given."""

    rank, world_size = 0, 1

    def __init__(self, folder: str | Path, device: torch.device, storage: Storage = LOCAL,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None):
        self.folder, self._device, self.storage, self.on_epoch = Path(folder), device, storage, on_epoch
        self.node_id = f"local:{socket.gethostname()}"
        self._since = time.monotonic()

    def device(self) -> torch.device:
        return self._device

    def prepare_model(self, model: nn.Module) -> nn.Module:
        self._since = time.monotonic()  # the first epoch's time counts from here, not from loading the data
        return model.to(self._device)

    def restored(self) -> None:
        return None

    def report(self, metrics: dict, directory: str | None) -> str | None:
        seconds = time.monotonic() - self._since
        stored = None if directory is None else self._keep(directory, metrics["epoch"])
        if self.on_epoch is not None:
            self.on_epoch({**metrics, "seconds": seconds, "checkpoint": stored})
        self._since = time.monotonic()
        return stored

    def _keep(self, directory: str, epoch: int) -> str:
        final = self.folder / f"epoch-{epoch:04d}"
        partial = self.folder / f".epoch-{epoch:04d}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(directory, partial)
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        return str(final)
