"""The driver's warm processes for group-level work: the DAG's groups (banray.dag) run in one GroupRunner,
their evaluations in another."""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any, Callable

import ray


@ray.remote(num_cpus=0, max_restarts=0)
class GroupRunner:
    """One process for a sweep's group-level work (Tune runs, evaluations, ensembles), each call in a thread
    of its own. A process per group would import torch, Ray Tune and MLflow anew: seconds of CPU each, which
    on a small node the trials pay for. It holds no CPU: the work it starts (trials) takes worker slots.
    Work off the critical path (evaluations) runs in a second runner with a higher `niceness`, so that on a
    busy node the operating system gives the CPU to trials first. A runner imports what its calls use as
    it starts, while the driver still opens the MLflow store: not when the first group is waiting for it."""

    # Tune's own per-result files (result.json, progress.csv, TensorBoard events) are written while the trial
    # waits for the controller after every report (9 ms of a 100 ms epoch); banray's metrics are in MLflow.
    TUNE_ENV = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
    # Without those files, Tune's result grid warns once per group that it found no per-trial metrics.
    QUIET_LOGGERS = ("ray.tune.analysis.experiment_analysis",)

    def __init__(self, warm: tuple[str, ...], niceness: int = 0, tune_state_every_s: float | None = None):
        os.nice(niceness)
        os.environ.update(self.TUNE_ENV)
        for name in self.QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        if tune_state_every_s is not None:
            # How often Tune saves a run's experiment state, which a resumed sweep restores trials from.
            os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = str(tune_state_every_s)
        for module in warm:
            importlib.import_module(module)

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        return function(*args)


def start_runner(calls_at_once: int, warm: tuple[str, ...] = (), niceness: int = 0,
                 tune_state_every_s: float | None = None) -> ray.actor.ActorHandle:
    """A GroupRunner that runs up to `calls_at_once` calls side by side, having imported the `warm` modules."""
    return GroupRunner.options(max_concurrency=max(1, calls_at_once)).remote(warm, niceness, tune_state_every_s)
