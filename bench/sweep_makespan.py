"""(c) A real sweep's makespan against its lower bound.

2 chains × (teacher + 2 BAN generations), 1 trial per generation, a small CNN on digits, on a local Ray
cluster with 2 worker slots. The lower bound is max(total trial work ÷ slots, the longest chain's
sequential work), computed twice: from the trials' own wall times (their MLflow runs, start to end: the
training plus what a trial does in its process) and from the generation groups' spans (a group adds
Tune's setup and the test-split evaluation of its best model). The first ratio is what the scheduling of
the sweep costs beyond its trials; Ray's fixed cost per trial is inside both bounds.

Run: .venv/bin/python -m bench.sweep_makespan   (about 3 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

from banray import sweep, tracking
from banray.spec import parse_spec
from bench.common import write


def lower_bound(durations: dict[tuple[int, int], float], slots: int) -> float:
    """max(work ÷ slots, longest chain) for {(chain, generation): seconds}."""
    chains: dict[int, float] = defaultdict(float)
    for (chain, _), seconds in durations.items():
        chains[chain] += seconds
    return max(sum(durations.values()) / slots, max(chains.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--analyse", metavar="STORAGE", help="only measure a finished run of this bench in STORAGE")
    args = parser.parse_args()
    storage = tempfile.mkdtemp(prefix="banray-bench-")
    spec = parse_spec({
        "name": "bench-makespan",
        "data": {"dataset": "digits"},
        "model": {"arch": "cnn", "kwargs": {"width": 16}},
        "train": {"epochs": args.epochs, "batch_size": 64, "lr": 0.05},
        "distill": {"objective": "ban", "teacher": "cached"},
        "generations": 2,
        "chains": 2,
        "control": False,  # the bench measures the chains' DAG alone
        "search": {"trials": 1},
        "storage": storage,
    })
    if args.analyse is None:
        sweep.run(spec, overwrite=True)
    sweep_dir = Path(args.analyse or storage) / spec.name
    report = json.loads((sweep_dir / "report.json").read_text())
    makespan = report["elapsed_s"]
    slots = os.cpu_count()  # one CPU per trial (resources' defaults): the local cluster's worker slots
    spans = {(s["chain"], s["generation"]): s["end_s"] - s["start_s"] for s in report["groups"]}

    client = tracking.resolve(None, spec.name, sweep_dir).client()
    experiment = client.get_experiment_by_name(spec.name)
    trials = {}
    for run in client.search_runs([experiment.experiment_id]):
        tags = run.data.tags
        if tags.get("banray.trial") and run.info.end_time:
            key = (int(tags["banray.chain"]), int(tags["banray.generation"]))
            trials[key] = trials.get(key, 0.0) + (run.info.end_time - run.info.start_time) / 1000
    by_trials, by_groups = lower_bound(trials, slots), lower_bound(spans, slots)
    write("sweep_makespan", {
        "what": "2 chains x (teacher + 2 generations), 1 trial each, cnn(width 16) on digits, "
                f"{args.epochs} epochs, distill.teacher cached, local Ray cluster",
        "slots": slots,
        "makespan_s": makespan,
        "trial_wall_s": {f"chain{c}-gen{g}": round(v, 2) for (c, g), v in sorted(trials.items())},
        "group_span_s": {f"chain{c}-gen{g}": round(v, 2) for (c, g), v in sorted(spans.items())},
        "lower_bound_from_trials_s": by_trials,
        "lower_bound_from_groups_s": by_groups,
        "ratio_vs_trials": makespan / by_trials,
        "ratio_vs_groups": makespan / by_groups,
    })


if __name__ == "__main__":
    main()
