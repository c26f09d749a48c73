"""(e) What a user pays for the quickstart: `banray sweep sweeps/quickstart.yaml` against bench/plain_quickstart.py,
the same work as a hand-written PyTorch script, run one after the other in the same bench run.

Reported: both wall times (the whole command, Ray's start and the report included) and their ratio; per
trial, its overhead (its MLflow run's span less its epochs: the epochs' time is estimated from the per-epoch
metric timestamps, (last − first) × E / (E − 1)); per group, its span in the DAG less the union of its trials'
spans (Tune's setup, the trial processes' start, the selection of the best trial).

Run: .venv/bin/python -m bench.quickstart   (about 2 minutes on 2 cores)
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

from banray.results import tracking
from banray.spec import group_name
from bench import plain_quickstart
from bench.common import write

REPO = Path(__file__).resolve().parents[1]


def union_s(spans: list[tuple[float, float]]) -> float:
    """The length of the union of [start, end] intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def trial_overheads(sweep_dir: Path, name: str) -> tuple[list[float], dict[str, list[tuple[float, float]]]]:
    """Each trial's run span less its epochs, and each group's trial spans (by MLflow parent run name)."""
    client = tracking.resolve(None, name, sweep_dir).client()
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    names = {run.info.run_id: run.info.run_name for run in runs}
    overheads, spans = [], {}
    for run in runs:
        if not run.data.tags.get("banray.trial") or not run.info.end_time:
            continue
        start, end = run.info.start_time / 1000, run.info.end_time / 1000
        stamps = sorted(m.timestamp / 1000 for m in client.get_metric_history(run.info.run_id, "val_error"))
        epochs = len(stamps)
        epoch_s = (stamps[-1] - stamps[0]) * epochs / (epochs - 1) if epochs > 1 else 0.0
        overheads.append(end - start - epoch_s)
        group = names.get(run.data.tags.get("mlflow.parentRunId"), "?")
        spans.setdefault(group, []).append((start, end))
    return overheads, spans


def group_overheads(sweep_dir: Path, trial_spans: dict[str, list[tuple[float, float]]]) -> list[float]:
    """Each group's span in the DAG less the union of its trials' spans (both on the DAG's clock)."""
    report = json.loads((sweep_dir / "report.json").read_text())
    overheads = []
    for group in report["groups"]:
        control = group["generation"] == "control"
        name = group_name(group["chain"], 0 if control else group["generation"], "control" if control else "main")
        origin = report["started_at"]  # wall-clock time of the DAG's start
        spans = [(start - origin, end - origin) for start, end in trial_spans.get(name, [])]
        overheads.append(group["end_s"] - group["start_s"] - union_s(spans))
    return overheads


def run_banray(storage: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "banray", "sweep", "sweeps/quickstart.yaml", "--storage", storage],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure() -> dict:
    plain = plain_quickstart.run()
    with tempfile.TemporaryDirectory(prefix="banray-bench-quickstart-") as storage:
        banray_s = run_banray(storage)
        sweep_dir = Path(storage) / "quickstart"
        trials, spans = trial_overheads(sweep_dir, "quickstart")
        groups = group_overheads(sweep_dir, spans)
    return {
        "plain_wall_s": round(plain["wall_s"], 2),
        "banray_wall_s": round(banray_s, 2),
        "ratio": banray_s / plain["wall_s"],
        "trial_overhead_s": {"median": statistics.median(trials), "max": max(trials), "n": len(trials)},
        "group_overhead_s": {"median": statistics.median(groups), "max": max(groups), "n": len(groups)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs (plain, banray)")
    args = parser.parse_args()
    runs = [measure() for _ in range(args.repeats)]
    write("quickstart", {
        "what": "banray sweep sweeps/quickstart.yaml (its default trainer) vs bench/plain_quickstart.py, "
                "2 chains x (teacher, BAN-1, BAN-2, teacher') x 2 trials x 10 epochs, cnn(width 16) on digits",
        "runs": runs,
        "ratio_median": statistics.median(r["ratio"] for r in runs),
    })


if __name__ == "__main__":
    main()
