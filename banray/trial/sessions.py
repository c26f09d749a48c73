"""Where the epoch loop (banray.training.loop) runs on Ray, behind its Session interface: a Ray Train worker,
or the Tune trial's own process (a warm host's session is banray.trial.hosts').

`resources.trainer` picks the engine per trial. Ray Train (`TorchTrainer`) starts a controller, a
worker group, a placement group and a process group for every trial: seconds per trial,
noise next to a GPU trial of hours, and the only way to run data-parallel workers. A trial of one CPU
worker needs none of it, so it trains in its Tune trial's process (`TuneSession`), which Tune reuses
across a group's trials. Both report metrics every epoch and a checkpoint when the loop asks for one,
hand back the last checkpoint's URI after a restart, and read storage through banray.storage (retried).
"""

from __future__ import annotations

import gc
import logging
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from torch import nn

from banray import ray_internals
from banray.records import TrialSummary
from banray.storage import SWEEP_FILES, checkpoint_uri
from banray.training.loop import train_loop
from banray.trial import wire
from banray.trial.tune_report import report_to_tune


def _uri(checkpoint: ray.train.Checkpoint | None) -> str | None:
    return None if checkpoint is None else checkpoint_uri(checkpoint)


class TrainSession:
    """A worker of a Ray Train worker group (one or more data-parallel ranks)."""

    storage = SWEEP_FILES

    def __init__(self, earlier: ray.train.Checkpoint | None = None) -> None:
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.node_id = ray.get_runtime_context().get_node_id()
        self.earlier = earlier  # the trial's own checkpoint from a lost Tune run, to start from

    def device(self) -> torch.device:
        return ray.train.torch.get_device()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return ray.train.torch.prepare_model(model)

    def restored(self) -> str | None:
        return _uri(ray.train.get_checkpoint() or self.earlier)

    def report(self, metrics: dict, directory: str | None) -> str | None:
        # Uploaded through the trial's retrying storage filesystem (banray.storage.ray_storage).
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory) if directory else None)
        return None  # Train picks the best checkpoint from its own records (TorchTrainer's Result)


class TuneSession:
    """The Tune trial's own process, one worker: its reports are the trial's results."""

    rank, world_size, storage = 0, 1, SWEEP_FILES

    def __init__(self, use_gpu: bool, restored: ray.train.Checkpoint | None) -> None:
        self.use_gpu, self._restored = use_gpu, _uri(restored)
        self.node_id = ray.get_runtime_context().get_node_id()

    def device(self) -> torch.device:
        return torch.device("cuda", 0) if self.use_gpu and torch.cuda.is_available() else torch.device("cpu")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device())

    def restored(self) -> str | None:
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


def train_loop_per_worker(config: dict[str, Any]) -> TrialSummary:
    """The TorchTrainer's function: the epoch loop on a Ray Train worker. `config` holds the trial's
    settings in their serialised form, read back here once."""
    ray_internals.train_report_logger().setLevel(logging.WARNING)  # banray logs metrics to MLflow instead
    settings, cpus_per_worker, earlier = wire.worker_fields(config)
    return train_loop(settings, TrainSession(earlier), cpus_per_worker)
