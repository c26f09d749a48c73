"""(c) A real sweep's makespan against its lower bound.

2 chains × (teacher + 2 BAN generations), 1 trial per generation, a small CNN on digits, on a local Ray
cluster with 2 worker slots, run once per trial length (`--epochs`, by default 10 and 400 epochs). The lower
bound is max(total trial work ÷ slots, the longest chain's sequential work), computed twice: from the trials'
own wall times (their MLflow runs, start to end: Ray Train's start of the trial's workers, the training, the
teacher-logit cache's build, the checkpoints) and from the generation groups' spans (a group adds Tune's
setup, the start of its trial's process, and the selection of its best trial). The first ratio is what the
sweep costs beyond its trials; `group_overhead_s` is that cost per group in seconds, which is fixed: it
weighs on short trials and vanishes into long ones. A third bound comes from the plain work: each chain's
generations trained by bench/plain_quickstart's hand-written loop (same model, epochs, batch, split, the
teacher's soft targets), the chains side by side in one process each, timed per generation: what the
sweep would take if the framework cost nothing.

Run: .venv/bin/python -m bench.sweep_makespan   (about 9 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from banray.sweep import start as sweep

from banray.results import tracking
from banray.spec import parse_spec
from bench import plain_quickstart
from bench.common import write

CHAINS, GENERATIONS, BATCH = 2, 2, 64


def lower_bound(durations: dict[tuple[int, int], float], slots: int) -> float:
    """max(work ÷ slots, longest chain) for {(chain, generation): seconds}."""
    chains: dict[int, float] = defaultdict(float)
    for (chain, _), seconds in durations.items():
        chains[chain] += seconds
    return max(sum(durations.values()) / slots, max(chains.values()))


def plain_chain(args: tuple[int, int]) -> dict[int, float]:
    """{generation: seconds} of one chain's generations, one trial each, trained by the plain loop."""
    chain, epochs = args
    torch.set_num_threads(1)
    splits, teacher, seconds = plain_quickstart.digits_splits(chain), None, {}
    plain_quickstart.train_trial(0, splits, None, 1, BATCH)  # torch's first-call set-up is no part of the work
    for generation in range(GENERATIONS + 1):
        start = time.perf_counter()
        _, teacher = plain_quickstart.train_trial(100 * chain + generation, splits, teacher, epochs, BATCH)
        seconds[generation] = time.perf_counter() - start
    return seconds


def plain_work(epochs: int) -> dict[tuple[int, int], float]:
    """{(chain, generation): seconds} of the sweep's work done by the plain loop, the chains side by side."""
    with multiprocessing.get_context("spawn").Pool(CHAINS) as pool:
        found = pool.map(plain_chain, [(chain, epochs) for chain in range(CHAINS)])
    return {(chain, g): s for chain, by_generation in enumerate(found) for g, s in by_generation.items()}


def group(key: tuple[int, int]) -> str:
    return f"chain{key[0]}-gen{key[1]}"


def measure(epochs: int, storage: str | None) -> dict:
    """Run the bench's sweep with trials of `epochs` epochs (or, with `storage`, analyse a finished one)."""
    analyse_only = storage is not None
    storage = storage or tempfile.mkdtemp(prefix="banray-bench-")
    spec = parse_spec({
        "name": "bench-makespan",
        "data": {"dataset": "digits"},
        "model": {"arch": "cnn", "kwargs": {"width": 16}},
        "train": {"epochs": epochs, "batch_size": BATCH, "lr": 0.05},
        "distill": {"objective": "ban", "teacher": "cached"},
        "generations": GENERATIONS,
        "chains": CHAINS,
        "control": False,  # the bench measures the chains' DAG alone
        "search": {"trials": 1},
        "storage": storage,
    })
    if not analyse_only:
        sweep.run(spec, overwrite=True)
    sweep_dir = Path(storage) / spec.name
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
    plain = plain_work(epochs)
    by_plain = lower_bound(plain, slots)
    return {
        "epochs": epochs,
        "slots": slots,
        "makespan_s": makespan,
        "trial_wall_s": {group(k): round(v, 2) for k, v in sorted(trials.items())},
        "group_span_s": {group(k): round(v, 2) for k, v in sorted(spans.items())},
        "group_overhead_s": {group(k): round(spans[k] - trials[k], 2) for k in sorted(trials)},
        "plain_wall_s": {group(k): round(v, 2) for k, v in sorted(plain.items())},
        "lower_bound_from_plain_s": by_plain,
        "lower_bound_from_trials_s": by_trials,
        "lower_bound_from_groups_s": by_groups,
        "ratio_vs_plain": makespan / by_plain,
        "ratio_vs_trials": makespan / by_trials,
        "ratio_vs_groups": makespan / by_groups,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 400], help="trial lengths to run")
    parser.add_argument("--analyse", metavar="STORAGE",
                        help="only measure a finished run of this bench in STORAGE (with a single --epochs)")
    args = parser.parse_args()
    if args.analyse and len(args.epochs) != 1:
        parser.error("--analyse takes the single --epochs its run was made with")
    write("sweep_makespan", {
        "what": "2 chains x (teacher + 2 generations), 1 trial each, cnn(width 16) on digits, "
                "distill.teacher cached, local Ray cluster; one run per trial length",
        "runs": [measure(epochs, args.analyse) for epochs in args.epochs],
    })


if __name__ == "__main__":
    main()
