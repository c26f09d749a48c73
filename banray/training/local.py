"""One trial of a spec in this process, with no engine (`banray trial`): its settings are those a sweep's
trial of the same (chain, generation, trial number) gets, searched ranges resolved to their midpoints (a
sweep's search samples them instead), and its checkpoints are kept as `<out>/chain<c>-gen<k>/trial<t>/
epoch-<e>`, each loadable as a teacher by the next generation, here or in a sweep of the same spec."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import torch

from banray.files import LOCAL, Storage
from banray.records import TrialSummary
from banray.spec import SweepSpec, TrialSettings, group_name, trial_seed
from banray.training.loop import train_loop
from banray.training.session import LocalSession


def trial_settings(spec: SweepSpec, chain: int, generation: int, trial: int, teacher: str | None,
                   teacher_checkpoints: Sequence[str] = ()) -> TrialSettings:
    """The settings of trial `trial` of (chain, generation) in the main arm, each searched range at its midpoint;
    `teacher` is generation − 1's checkpoint, `teacher_checkpoints` an ensemble teacher's members (generations
    0 … generation − 1)."""
    settings = spec.generation_settings(chain, generation, teacher, "main", teacher_checkpoints)
    for dotted, searched in spec.search_space(generation).items():
        section, name = dotted.split(".")
        settings[section][name] = searched.midpoint()
    seed = trial_seed(settings.pop("seed_root"), chain, generation, trial)
    return TrialSettings.model_validate({**settings, "trial": trial, "seed": seed})


def trial_folder(out: str | Path, settings: TrialSettings) -> Path:
    """Where a trial's checkpoints are kept under `out`."""
    return Path(out) / group_name(settings.chain, settings.generation, settings.arm) / f"trial{settings.trial}"


def run_trial(settings: TrialSettings, folder: Path, device: torch.device, cpus: float = 1,
              storage: Storage = LOCAL, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrialSummary:
    """Train the trial here on `device`, keeping its checkpoints in `folder`; its summary names the best one."""
    return train_loop(settings, LocalSession(folder, device, storage, on_epoch), cpus)
