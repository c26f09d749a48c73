"""The engine choice: which Tune trainable trains a trial (a warm host's driver, or `run_trial`: a
TorchTrainer or the Tune trial's own process), registered under one name per resources. A new engine is a
trainable function in its own file of this folder and one line in `trainable`."""

from __future__ import annotations

import threading

import ray.tune as tune

from banray.spec import ResourcesSpec
from banray.trial.hosts import drive_host
from banray.trial.trainable import run_trial, trial_class, trial_resources


_registering = threading.Lock()


def trainable(resources: ResourcesSpec) -> type[tune.Trainable]:
    """The Tune trainable of a trial: the driver of a warm host (banray.trial.hosts, a function of its own so
    that its process imports no torch), or `run_trial`."""
    return trial_class(drive_host if resources.on_host() else run_trial)


def registered_trainable(resources: ResourcesSpec) -> str:
    """The name of the trial trainable with its resources in Tune's registry. The registry is one per
    process and not thread-safe, and the driver's Tune runs start side by side in its threads: they
    register here, one at a time, and hand Tune the name."""
    wanted, trial_trainable = trial_resources(resources), trainable(resources)
    # Tune's registry is cluster-wide: the name says everything the registered object holds.
    name = "-".join(["banray", trial_trainable.__name__.replace("_", "-"), *(f"{k}{v:g}" for k, v in sorted(wanted.items()))])
    with _registering:
        tune.register_trainable(name, tune.with_resources(trial_trainable, wanted))
    return name

