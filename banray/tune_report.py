"""A trial's report to Ray Tune, with its checkpoint: light on imports (no torch), for the Tune trial that
drives a warm host (banray.hosts) as for the worker loop's Tune session (banray.session)."""

from __future__ import annotations

import ray
import ray.train
import ray.tune as tune

from banray.storage import checkpoint_uri


def report_to_tune(metrics: dict, directory: str | None) -> str | None:
    """Report an epoch as this Tune trial's result, with the checkpoint in `directory` if given; returns where
    Tune stored it (through the run's retrying storage filesystem)."""
    if directory is None:
        tune.report(metrics)
        return None
    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
    storage = tune.get_context().get_storage()
    return checkpoint_uri(ray.train.Checkpoint(storage.checkpoint_fs_path, filesystem=storage.storage_filesystem))
