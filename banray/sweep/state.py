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
    records), why it stopped, the generation it is running with that generation's MLflow run, and its
    control arm (finished record, or the MLflow run of the running one)."""

    spec: SweepSpec
    storage: SweepStorage
    results: dict[int, list[GenerationRecord]] = dataclasses.field(default_factory=dict)
    stopped: dict[int, str] = dataclasses.field(default_factory=dict)
    running: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    controls: dict[int, GenerationRecord] = dataclasses.field(default_factory=dict)
    controls_running: dict[int, str] = dataclasses.field(default_factory=dict)  # chain → MLflow run id
    # For `banray status`: when each running control arm started, the finished groups' wall-clock spans
    # (chain, generation or "control", started_at, ended_at) and how many groups run at once.
    control_since: dict[int, float] = dataclasses.field(default_factory=dict)
    spans: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    groups_at_once: int | None = None

    @classmethod
    def restore(cls, spec: SweepSpec, storage: SweepStorage, saved: dict[str, Any] | None) -> SweepState:
        state = cls(spec, storage, results={chain: [] for chain in range(spec.chains)})
        state.spans = list((saved or {}).get("groups") or [])  # absent from states written before it was kept
        for key, value in (saved or {"chains": {}})["chains"].items():
            chain = int(key)
            state.results[chain] = [GenerationRecord(**r) for r in value["generations"]]
            if value["stopped"]:
                state.stopped[chain] = value["stopped"]
            if value["running"]:
                state.running[chain] = value["running"]
            if value["control"]:
                state.controls[chain] = GenerationRecord(**value["control"])
            if value["control_running"]:
                state.controls_running[chain] = value["control_running"]
        return state

    def started(self, chain: int, generation: int, run_id: str) -> None:
        previous = self.running.get(chain)
        if previous is not None and previous["generation"] != generation:  # it ended: its successor starts
            self._ended(chain, previous["generation"], previous.get("started_at"))
        self.running[chain] = {"generation": generation, "mlflow_run_id": run_id, "started_at": time.time()}
        self.save()

    def _ended(self, chain: int, generation: int | str, started_at: float | None) -> None:
        self.spans.append({"chain": chain, "generation": generation, "started_at": started_at, "ended_at": time.time()})

    def control_started(self, chain: int, run_id: str) -> None:
        self.controls_running[chain] = run_id
        self.control_since[chain] = time.time()
        self.save()

    def progressed(self, results: dict[int, list], stopped: dict[int, str], controls: dict[int, Any]) -> None:
        self.results, self.stopped, self.controls = results, stopped, controls
        for chain in [c for c, group in self.running.items() if len(results.get(c, [])) > group["generation"]]:
            group = self.running.pop(chain)
            self._ended(chain, group["generation"], group.get("started_at"))
        for chain in [c for c in self.controls_running if c in controls]:
            del self.controls_running[chain]
            self._ended(chain, "control", self.control_since.pop(chain, None))
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
                        "control": dataclasses.asdict(self.controls[chain]) if chain in self.controls else None,
                        "control_running": self.controls_running.get(chain),
                        "control_started_at": self.control_since.get(chain),
                    }
                    for chain, records in self.results.items()
                },
            },
        )
