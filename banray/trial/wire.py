"""The wire between a group and its trials: a trial's Tune config, built for a group by `group_config` and read
back here alone, with no torch (the Tune trial that drives a warm host imports none).

Tune carries banray's fields under one key, WIRE: the generation's settings as the spec resolved them and the
trial's ticket (which group it belongs to, where it reports and what it may hold). Beside them sit what differs
per trial: its number (TRIAL) and the search's values, under Optuna's names (a section, then a field). The typed
settings are read back once per process, by banray.trial.trainable.read_trial (it needs the spec's types, and
so torch); everything else reads the ticket.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, ConfigDict

WIRE = "banray"
TRIAL = "trial"  # the trial's number, which the search (or the grid of trial numbers) sets beside the wire


class EarlierCheckpoint(BaseModel):
    """Where a group's Tune state was lost, a trial's own last checkpoint, and the searched values it was
    trained with (banray.sweep.earlier_trials)."""

    model_config = ConfigDict(frozen=True)

    checkpoint: str
    settings: dict[str, Any]
    epoch: int


class Ticket(BaseModel):
    """What every trial of one group carries besides its settings, readable without torch."""

    model_config = ConfigDict(frozen=True)

    chain: int
    generation: int
    arm: str
    metric: str
    train_storage: str  # where Ray Train keeps the runs of the group's trials
    slots_actor: str  # the name of the sweep's WorkerSlots actor
    resources: dict[str, Any]  # the spec's `resources` section, as it dumps
    earlier_checkpoints: dict[int, EarlierCheckpoint] = {}  # trial number → its checkpoint from a lost Tune run


def group_config(settings: dict[str, Any], ticket: Ticket, per_trial: dict[str, Any]) -> dict[str, Any]:
    """The `param_space` of a group's Tune run: the generation's settings and the ticket under WIRE, and
    `per_trial` (the grid of trial numbers, or nothing where the searcher numbers its suggestions) beside."""
    return {WIRE: {"settings": settings, "ticket": ticket.model_dump(mode="json")}, **per_trial}


def ticket(config: dict[str, Any]) -> Ticket:
    return Ticket.model_validate(config[WIRE]["ticket"])


def trial_number(config: dict[str, Any]) -> int | None:
    """The trial's number (None in a config that has none yet: Tune's view of the group before its trials)."""
    return config.get(TRIAL)


def searched(config: dict[str, Any], keys) -> dict[str, Any]:
    """The values the search gave the trial for `keys` (dotted: section.field)."""
    return {key: config[key.split(".")[0]][key.split(".")[1]] for key in keys}


def settings_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The trial's settings as plain fields: the generation's, with the search's values and the trial number put
    in (still with the generation's `seed_root`, from which the reader draws the trial's seed)."""
    fields = copy.deepcopy(config[WIRE]["settings"])
    for section, values in config.items():
        if section not in (WIRE, TRIAL):
            fields[section] = {**fields.get(section, {}), **values}
    return {**fields, TRIAL: config[TRIAL]}


def worker_config(settings: Any, cpus_per_worker: float, earlier: Any) -> dict[str, Any]:
    """The config of a trial's Ray Train workers: its typed settings (Ray pickles them across, unchanged), the
    CPUs each worker may use, and the checkpoint to start from where its group's Tune state was lost."""
    return {"settings": settings, "cpus_per_worker": cpus_per_worker, "earlier_checkpoint": earlier}


def worker_fields(config: dict[str, Any]) -> tuple[Any, float, Any]:
    """(settings, cpus_per_worker, earlier checkpoint) of a Ray Train worker's config."""
    return config["settings"], config["cpus_per_worker"], config["earlier_checkpoint"]
