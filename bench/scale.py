"""(f) What a sweep costs per group as its chains grow: `banray sweep` of 8, 32 and 64 chains.

Each chain is a teacher and one BAN generation, one trial of one epoch each (a CNN of width 8 on the synthetic
dataset: the least work that still runs every part of a group), with each chain's Ens*2 (Teacher, BAN-1) in a
run of its own, on a local Ray cluster of the machine's cores. The work per group is the same at every size,
so the makespan per group must stay flat: what grows with the chains (the groups' Tune runs side by side in
the driver, their MLflow calls through one bound per process, the evaluations' runner) must not make each
group dearer. Reported per size: the command's wall time, the DAG's makespan, makespan ÷ groups, and the time
after the DAG (the chains' ensembles, the registry and the report: where 32 chains once died on MLflow's
connection pool).

Run: .venv/bin/python -m bench.scale   (about 10 minutes on 2 cores; --smoke: 2 chains, nothing written)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import write

REPO = Path(__file__).resolve().parents[1]
GENERATIONS = 1


def spec(chains: int) -> dict:
    return {
        "name": f"scale{chains}",
        "data": {"dataset": "synthetic", "val_fraction": 0.2, "seed": 0},
        "model": {"arch": "cnn", "kwargs": {"width": 8}},
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.05},
        "distill": {"objective": "ban"},
        "generations": GENERATIONS,
        "chains": chains,
        "control": False,
        "ensembles": {"include_teacher": True},
        "search": {"trials": 1},
    }


def measure(chains: int) -> dict:
    """One sweep of `chains` chains, run as a user runs it; its figures from its report."""
    with tempfile.TemporaryDirectory(prefix="banray-bench-scale-") as folder:
        path = Path(folder) / "spec.yaml"
        path.write_text(yaml.safe_dump(spec(chains)))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "banray", "sweep", str(path), "--storage", folder], cwd=REPO,
                       check=True, stdout=subprocess.DEVNULL)
        wall_s, ended = time.perf_counter() - start, time.time()
        report = json.loads((Path(folder) / f"scale{chains}" / "report.json").read_text())
    groups = len(report["groups"])
    spans = [g["end_s"] - g["start_s"] for g in report["groups"]]
    makespan = report["elapsed_s"]
    return {
        "chains": chains,
        "groups": groups,
        "wall_s": round(wall_s, 1),
        "makespan_s": round(makespan, 1),
        "makespan_per_group_s": round(makespan / groups, 3),
        "group_span_median_s": round(statistics.median(spans), 2),
        "after_dag_s": round(ended - report["started_at"] - makespan, 1),
        "utilisation": report["utilisation"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, nargs="+", default=[8, 32, 64], help="sweep sizes to run")
    parser.add_argument("--smoke", action="store_true", help="one sweep of 2 chains, printed, not written")
    parser.add_argument("--note", default="", help="what disturbed the run (a shared machine), kept with it")
    args = parser.parse_args()
    if args.smoke:
        print(json.dumps(measure(2), indent=2))
        return
    runs = [measure(chains) for chains in args.chains]
    write("scale", {
        "what": f"banray sweep of N chains x (teacher + {GENERATIONS} generation), 1 trial of 1 epoch each, "
                "cnn(width 8) on synthetic data, Ens*2 per chain, local Ray cluster",
        "note": args.note,
        "runs": runs,
        "per_group_ratio_largest_to_smallest": runs[-1]["makespan_per_group_s"] / runs[0]["makespan_per_group_s"],
    })


if __name__ == "__main__":
    main()
