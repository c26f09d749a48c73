"""The sweep state, `state.json` in the sweep folder: rewritten by the driver whenever a group starts or
ends, read back by a resumed sweep (banray.sweep.start) and by `banray status` (banray.commands.inspection)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from banray.records import GenerationRecord
from banray.spec import SweepSpec
from banray.storage import STATE_FILE, SweepStorage


@dataclass
class SweepState:
    """What `state.json` holds, kept current by the driver: per chain, its finished generations (whole
    records), why it stopped, the generation it is running with that generation's MLflow run, and its side
    arms (finished records, or the MLflow runs of the running ones), by arm."""

    spec: SweepSpec
    storage: SweepStorage
    results: dict[int, list[GenerationRecord]] = dataclasses.field(default_factory=dict)
    stopped: dict[int, str] = dataclasses.field(default_factory=dict)
    running: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    arms: dict[int, dict[str, GenerationRecord]] = dataclasses.field(default_factory=dict)
    arms_running: dict[int, dict[str, str]] = dataclasses.field(default_factory=dict)  # chain → arm → MLflow run id
    # For `banray status`: when each running side arm started, the finished groups' wall-clock spans
    # (chain, generation or arm, started_at, ended_at) and how many groups run at once.
    arms_since: dict[int, dict[str, float]] = dataclasses.field(default_factory=dict)
    spans: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    groups_at_once: int | None = None

    @classmethod
    def restore(cls, spec: SweepSpec, storage: SweepStorage, saved: dict[str, Any] | None) -> SweepState:
        chains = range(spec.chains)
        state = cls(spec, storage, results={c: [] for c in chains}, arms={c: {} for c in chains},
                    arms_running={c: {} for c in chains}, arms_since={c: {} for c in chains})
        state.spans = list((saved or {}).get("groups") or [])  # absent from states written before it was kept
        for key, value in (saved or {"chains": {}})["chains"].items():
            chain = int(key)
            state.results[chain] = [GenerationRecord(**r) for r in value["generations"]]
            if value["stopped"]:
                state.stopped[chain] = value["stopped"]
            if value["running"]:
                state.running[chain] = value["running"]
            state.arms[chain] = {arm: GenerationRecord(**r) for arm, r in value["arms"].items()}
            state.arms_running[chain] = dict(value["arms_running"])
        return state

    def started(self, chain: int, generation: int, run_id: str) -> None:
        previous = self.running.get(chain)
        if previous is not None and previous["generation"] != generation:  # it ended: its successor starts
            self._ended(chain, previous["generation"], previous.get("started_at"))
        self.running[chain] = {"generation": generation, "mlflow_run_id": run_id, "started_at": time.time()}
        self.save()

    def _ended(self, chain: int, generation: int | str, started_at: float | None) -> None:
        self.spans.append({"chain": chain, "generation": generation, "started_at": started_at, "ended_at": time.time()})

    def arm_started(self, chain: int, arm: str, run_id: str) -> None:
        self.arms_running[chain][arm] = run_id
        self.arms_since[chain][arm] = time.time()
        self.save()

    def progressed(self, results: dict[int, list], stopped: dict[int, str], arms: dict[int, dict[str, Any]]) -> None:
        self.results, self.stopped, self.arms = results, stopped, arms
        for chain in [c for c, group in self.running.items() if len(results.get(c, [])) > group["generation"]]:
            group = self.running.pop(chain)
            self._ended(chain, group["generation"], group.get("started_at"))
        for chain, running in self.arms_running.items():
            for arm in [a for a in running if a in arms.get(chain, {})]:
                del running[arm]
                self._ended(chain, arm, self.arms_since[chain].pop(arm, None))
        self.save()

    def save(self, finished: bool = False) -> None:
        self.storage.write_json(
            STATE_FILE,
            {
                "sweep": self.spec.name,
                "spec_hash": self.spec.spec_hash(),
                "finished": finished,
                "groups_at_once": self.groups_at_once,
                "groups": self.spans,
                "chains": {
                    str(chain): {
                        "stopped": self.stopped.get(chain),
                        "running": self.running.get(chain),
                        "generations": [dataclasses.asdict(r) for r in records],
                        "arms": {arm: dataclasses.asdict(r) for arm, r in self.arms.get(chain, {}).items()},
                        "arms_running": self.arms_running.get(chain, {}),
                        "arms_started_at": self.arms_since.get(chain, {}),
                    }
                    for chain, records in self.results.items()
                },
            },
        )
