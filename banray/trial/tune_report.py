"""A Tune trial's side of its checkpoints, light on imports (no torch), for the Tune trial that drives a warm
host (banray.trial.hosts) as for the worker loop's Tune session (banray.trial.sessions): its report to Ray Tune, with its
checkpoint, and the checkpoint it goes on from."""

from __future__ import annotations

from typing import Any

import ray
import ray.train
import ray.tune as tune

from banray import ray_internals
from banray.storage import checkpoint_uri, ray_storage
from banray.trial import wire


def report_to_tune(metrics: dict, directory: str | None) -> str | None:
    """Report an epoch as this Tune trial's result, with the checkpoint in `directory` if given; returns where
    Tune stored it (through the run's retrying storage filesystem)."""
    if directory is None:
        tune.report(metrics)
        return None
    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
    path, filesystem = ray_internals.reported_checkpoint()
    return checkpoint_uri(ray.train.Checkpoint(path, filesystem=filesystem))


def earlier_checkpoint(config: dict[str, Any]) -> ray.train.Checkpoint | None:
    """Where the group's Tune state was lost and the group started its trials again (banray.sweep.earlier_trials):
    this trial's own last checkpoint from before, if it was trained with this trial's searched values."""
    earlier = wire.ticket(config).earlier_checkpoints.get(wire.trial_number(config))
    if earlier is None or wire.searched(config, earlier.settings) != earlier.settings:
        return None
    path, filesystem = ray_storage(earlier.checkpoint)
    return ray.train.Checkpoint(path, filesystem=filesystem)


def continued_from(config: dict[str, Any]) -> ray.train.Checkpoint | None:
    """The checkpoint a Tune trial trains on from: the one Tune restarts or restores it with, else its own
    earlier one, else None (it starts from scratch)."""
    return tune.get_checkpoint() or earlier_checkpoint(config)

