"""What a group's earlier, interrupted Tune run left of its trials, for a resumed sweep that cannot restore
that run (its Tune state was never saved whole): each trial's settings (its MLflow run's params) and its own
last checkpoint (read from storage, recognised by its record, never by its path). The group starts its trials
again with the same trial numbers and settings, each from that checkpoint, so no trial trains from scratch
what it had already trained.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
from ray.train import Checkpoint

from banray.results import tracking
from banray.spec import Range, SweepSpec
from banray.storage import SWEEP_FILES, checkpoint_uri, ray_storage, with_retries
from banray.training import checkpoint


@dataclass(frozen=True)
class LastCheckpoint:
    """A trial's own last whole checkpoint found in storage, and the epoch it was saved after (the group adds
    the searched values it was trained with, as a wire.EarlierCheckpoint)."""

    uri: str
    epoch: int


def _folders(fs: pafs.FileSystem, path: str, pattern: str) -> list[str]:
    """The folders directly under `path` whose names match `pattern` (none if `path` is not there)."""
    listing = with_retries(f"listing {path}", lambda: fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))
    return [info.path for info in listing if info.type == pafs.FileType.Directory and fnmatch.fnmatch(info.base_name, pattern)]


def _whole(fs: pafs.FileSystem, path: str) -> bool:
    """Whether a checkpoint folder holds every file a restarted trial reads (an upload cut short may not)."""
    names = {info.base_name for info in with_retries(f"listing {path}", lambda: fs.get_file_info(pafs.FileSelector(path)))}
    return {checkpoint.METADATA_FILE, checkpoint.WEIGHTS_FILE, checkpoint.TRAINING_STATE_FILE} <= names


def last_checkpoints(trial_folders: str, pattern: str, settings: dict[str, Any]) -> dict[int, LastCheckpoint]:
    """Trial number → its last whole checkpoint, among the checkpoints in the folders matching `pattern` under
    `trial_folders` (a group's Tune trial folders, or its trials' Ray Train runs) whose record says they were
    trained for this group (`settings`: its generation settings)."""
    root, fs = ray_storage(trial_folders)
    found: dict[int, LastCheckpoint] = {}
    for folder in _folders(fs, root, pattern):
        for path in _folders(fs, folder, "*"):
            if not _whole(fs, path):  # a checkpoint holds banray's three files; any other folder does not
                continue
            uri = checkpoint_uri(Checkpoint(path, filesystem=fs))
            try:
                record = with_retries(f"reading {uri}", lambda: checkpoint.read_record(uri, SWEEP_FILES))
            except checkpoint.BadCheckpoint:
                continue
            if not _for_group(record, settings):
                continue
            if record.trial not in found or record.epoch > found[record.trial].epoch:
                found[record.trial] = LastCheckpoint(uri, record.epoch)
    return found


def _for_group(record: checkpoint.CheckpointRecord, settings: dict[str, Any]) -> bool:
    return (record.sweep, record.spec_hash, record.chain, record.generation, record.arm) == (
        settings["sweep"], settings["spec_hash"], settings["chain"], settings["generation"], settings["arm"])


def earlier_settings(track: tracking.Tracking, experiment_id: str, generation_run_id: str, spec: SweepSpec,
                     generation: int) -> list[dict[str, Any]]:
    """The searched values (by dotted key) of the group's earlier trials 0, 1, ... in order, read back from
    their MLflow runs' params, up to the first trial number that has no run."""
    space = spec.search_space(generation)
    runs = track.client().search_runs(
        [experiment_id], filter_string=f"tags.`{tracking.PARENT}` = '{generation_run_id}'", max_results=10_000)
    params = {run.data.tags.get(f"{tracking.TAG_PREFIX}trial"): run.data.params for run in runs}
    settings: list[dict[str, Any]] = []
    while (logged := params.get(str(len(settings)))) is not None:
        values = {key: _typed(logged.get(key), value_range) for key, value_range in space.items()}
        if None in values.values():
            break
        settings.append(values)
    return settings


def _typed(logged: str | None, value_range: Range) -> Any:
    """A searched value as MLflow logged it (str of the value) back as the value the search drew; None if
    there is none."""
    if logged is None:
        return None
    if value_range.choice is not None:
        return next((choice for choice in value_range.choice if str(choice) == logged), None)
    return int(logged) if value_range.integer is not None else float(logged)
