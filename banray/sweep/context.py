"""What every generation group of a sweep shares (built once by the driver), how many of them keep the worker
slots busy, and the settings of the process their Tune runs go on in."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from banray.environment import set_variables
from banray.results import tracking
from banray.spec import SweepSpec


@dataclass(frozen=True)
class SweepContext:
    """What every group of a sweep shares; built once by the driver."""

    spec: SweepSpec
    sweep_dir: str
    tracking: tracking.Tracking
    experiment_id: str
    slots_actor: str  # name of the WorkerSlots actor
    capacity: int  # worker slots: trials that can train at once
    tune_verbose: int  # Tune's live table only when the driver's output is a terminal

    def trials_at_once(self) -> int:
        """How many of a group's trials run at once: all the slots can take (the slots pool queues the rest)
        or, for trials that train in their own process, the group's share of the slots among the chains. A
        trial's process serves its group's next trial, so while the chains keep the slots busy, fewer
        trials at a time start fewer processes."""
        spec = self.spec
        if spec.resources.engine() == "train":
            return min(self.capacity, spec.search.trials)
        return max(1, min(spec.search.trials, self.capacity // spec.chains))

    @property
    def groups_at_once(self) -> int:
        """How many groups keep the worker slots busy: the chains' own, and control arms in the slots they leave."""
        return max(self.spec.chains, self.capacity // self.trials_at_once())

    @property
    def train_storage(self) -> str:
        return f"{self.sweep_dir}/train"

    @property
    def tune_storage(self) -> str:
        return f"{self.sweep_dir}/tune"


def run_groups_here(tune_state_every_s: float) -> None:
    """Set this process up for the groups' Tune runs: Tune reads these settings from the environment of the
    process it runs in. `tune_state_every_s`: how often Tune saves a run's experiment state, which a resumed
    sweep restores trials from."""
    # Tune's own per-result files (result.json, progress.csv, TensorBoard events) are written while the trial
    # waits for the controller after every report (a tenth of a short epoch); banray's metrics are in MLflow.
    set_variables({"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "TUNE_GLOBAL_CHECKPOINT_S": str(tune_state_every_s)})
    # Without those files, Tune's result grid warns once per group that it found no per-trial metrics.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)

