"""The driver's warm process for the evaluations of finished groups (banray.sweep.evaluations): the test-split
evaluation of each selected generation, its model logging, and each chain's ensembles."""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable

import ray


@ray.remote(num_cpus=0, max_restarts=0)
class EvaluationsRunner:
    """One process for a sweep's group-level work off the critical path, each call in a thread of its own. A
    process per call would import torch and MLflow anew: seconds of CPU each, which on a small node the
    trials pay for. It holds no CPU, and runs with a higher `niceness`, so that on a busy node the operating
    system gives the CPU to trials first. A runner imports what its calls use as it starts, while the driver
    still opens the MLflow store: not when the first evaluation is waiting for it."""

    def __init__(self, warm: tuple[str, ...], niceness: int = 0):
        os.nice(niceness)
        for module in warm:
            importlib.import_module(module)

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        return function(*args)


def start_evaluations_runner(calls_at_once: int, warm: tuple[str, ...] = (), niceness: int = 0) -> ray.actor.ActorHandle:
    """A EvaluationsRunner that runs up to `calls_at_once` calls side by side, having imported the `warm` modules."""
    return EvaluationsRunner.options(max_concurrency=max(1, calls_at_once)).remote(warm, niceness)
