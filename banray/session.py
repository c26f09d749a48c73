"""Where the worker loop runs, behind one small interface: a Ray Train worker, or the Tune trial's own process.

`resources.trainer` picks the engine per trial. Ray Train (`TorchTrainer`) starts a controller, a
worker group, a placement group and a process group for every trial: 9-16 s on a 2-core machine,
noise next to a GPU trial of hours, and the only way to run data-parallel workers. A trial of one CPU
worker needs none of it, so it trains in its Tune trial's process (`TuneSession`), which Tune reuses
across a group's trials. Both report metrics every epoch and a checkpoint when the loop asks for one,
and both hand back the last checkpoint after a restart.
"""

from __future__ import annotations

import gc
import tempfile
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Callable, Iterator, Protocol

import ray.train
import ray.train.torch
import torch
from torch import nn

from banray.tune_report import report_to_tune


class Session(Protocol):
    rank: int
    world_size: int
    prepare_loader: Callable | None  # wraps a DataLoader for data-parallel workers; None: use it as it is

    def device(self) -> torch.device: ...

    def prepare_model(self, model: nn.Module) -> nn.Module: ...

    def restored(self) -> ray.train.Checkpoint | None:
        """The last checkpoint of this trial, if it is being restarted."""

    def report(self, metrics: dict, directory: str | None) -> str | Future | None:
        """Report one epoch's metrics, with the checkpoint in `directory` if given; returns the URI the
        checkpoint was stored at where the engine says, or a Future of it where it stores it later (None
        otherwise). The folder is the caller's again once this returns."""


class TrainSession:
    """A worker of a Ray Train worker group (one or more data-parallel ranks)."""

    @staticmethod
    def prepare_loader(loader: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
        # banray.tasks shards the loader itself, seeded by the trial; Ray's sampler is seeded 0.
        return ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False)

    def __init__(self, earlier: ray.train.Checkpoint | None = None) -> None:
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.earlier = earlier  # the trial's own checkpoint from a lost Tune run, to start from

    def device(self) -> torch.device:
        return ray.train.torch.get_device()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return ray.train.torch.prepare_model(model)

    def restored(self) -> ray.train.Checkpoint | None:
        return ray.train.get_checkpoint() or self.earlier

    def report(self, metrics: dict, directory: str | None) -> str | None:
        # Uploaded through the trial's retrying storage filesystem (banray.storage.ray_storage).
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory) if directory else None)
        return None  # Train picks the best checkpoint from its own records (TorchTrainer's Result)


class TuneSession:
    """The Tune trial's own process, one worker: its reports are the trial's results."""

    rank, world_size, prepare_loader = 0, 1, None

    def __init__(self, use_gpu: bool, restored: ray.train.Checkpoint | None) -> None:
        self.use_gpu, self._restored = use_gpu, restored

    def device(self) -> torch.device:
        return torch.device("cuda", 0) if self.use_gpu and torch.cuda.is_available() else torch.device("cpu")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device())

    def restored(self) -> ray.train.Checkpoint | None:
        return self._restored

    def report(self, metrics: dict, directory: str | None) -> str | None:
        return report_to_tune(metrics, directory)

    @staticmethod
    def release_device_memory() -> None:
        """Hand the GPU memory torch's allocator still caches back to the device once a trial has ended: the
        process serves its group's next trial (or waits for it), and the trials sharing the GPU need it."""
        gc.collect()  # what the ended trial left in reference cycles
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()


@contextmanager
def checkpoint_folder(wanted: bool) -> Iterator[str | None]:
    """A temporary folder to write a checkpoint into, or None when this epoch reports none."""
    if not wanted:
        yield None
        return
    with tempfile.TemporaryDirectory() as directory:
        yield directory
