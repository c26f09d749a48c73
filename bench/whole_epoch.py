"""(a) A whole epoch as a trial runs it, against a plain PyTorch loop doing the same epoch.

The banray side is one generation group of one trial, run by `banray.sweep.group.run_group` on a local Ray
cluster exactly as a sweep runs it: a Tune run, the trial's process, the worker loop's epoch (training,
validation, a checkpoint when the validation error is at least as good as the best so far and at the
last epoch, the report to Tune) and the group's MLflow logging of every epoch. Its epoch time is the median
gap between consecutive epochs' reports (MLflow's per-epoch timestamps, logged as each report arrives).
The plain side, in this process on one thread as the trial's worker is: the same split, model, optimizer
and schedule; per epoch a pass over the split in shuffled batches (the same batched views) with forward, loss,
backward and step, a validation pass, and
the best epoch's weights kept (a deep copy of the state dict), timed just before and just after banray's
group (their mean is the plain time: the machine's speed drifts). Ratio = plain epoch time / banray's; the
digits case runs five such rounds and reports the median round (the WRN case one: its epochs are long).

Run: .venv/bin/python -m bench.whole_epoch   (about 5 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch
import torch.nn.functional as F

from banray import ray_internals

from banray.sweep import start as sweep

from banray.catalog.models import build_model
from banray.results import tracking
from banray.spec import TrainSpec, parse_spec
from banray.sweep.context import SweepContext, run_groups_here
from banray.sweep.generation_runs import start_generation_run
from banray.sweep.group import run_group
from banray.training.loop import make_optimizer, make_scheduler, seed_everything
from banray.training.tasks import make_task
from banray.trial.hosts import start_host
from banray.trial.slots import WorkerSlots
from bench.common import write

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import fakedata  # noqa: E402

fakedata.allow_unverified_cifar()


def cases(root: Path) -> list[dict]:
    fakedata.write_cifar10(root, per_batch=100, test=100)
    common = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "lr_schedule": "cosine"}
    return [
        {"name": "digits-cnn16", "data": {"dataset": "digits"}, "model": {"arch": "cnn", "kwargs": {"width": 16}},
         "train": {**common, "epochs": 20, "batch_size": 32}, "rounds": 5},
        {"name": "cifar10-shaped-wrn16-4", "data": {"dataset": "cifar10", "root": str(root)},
         "model": {"arch": "wrn", "kwargs": {"depth": 16, "widen_factor": 4}},
         "train": {**common, "epochs": 4, "batch_size": 64}, "rounds": 1},
    ]


def banray_epoch_s(case: dict, storage: Path) -> float:
    """The median epoch of a one-trial group run as a sweep runs it."""
    spec = parse_spec({"name": case["name"], "data": case["data"], "model": case["model"], "train": case["train"],
                       "generations": 1, "search": {"trials": 1}, "storage": str(storage)})
    track = tracking.resolve(None, spec.name, storage)
    experiment_id = tracking.ensure_experiment(track)
    slots = f"bench-slots-{storage.name}"
    pool = WorkerSlots.options(name=slots).remote(1, start_host)  # held until the group is over: an unheld actor is collected
    ctx = SweepContext(spec=spec, sweep_dir=str(storage / spec.name), tracking=track, experiment_id=experiment_id,
                       slots_actor=slots, capacity=1, tune_verbose=0)
    run_id = start_generation_run(ctx, 0, 0, None)
    record = run_group(ctx, 0, 0, None, run_id, restore=False)
    ray.kill(pool)
    history = track.client().get_metric_history(record.best_trial_run_id, "val_error")
    stamps = [m.timestamp / 1000 for m in sorted(history, key=lambda m: m.step)]
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:]))


def plain_epoch_s(case: dict) -> float:
    """The median epoch of a hand-written loop: train, validate, keep the best weights."""
    spec = parse_spec({"name": case["name"], "data": case["data"], "model": case["model"], "train": case["train"],
                       "generations": 1})
    seed_everything(0)
    task = make_task(spec.chain_data(0), spec.train, seed=0)  # the split the trial trains on
    model = build_model(spec.model.arch, num_classes=task.num_classes, input_shape=task.input_shape,
                        **spec.model.kwargs)
    optimizer = make_optimizer(model.parameters(), spec.train)
    scheduler = make_scheduler(optimizer, spec.train)
    splits = task.splits
    best, best_state, times = float("inf"), None, []
    for epoch in range(1, spec.train.epochs + 1):
        start = time.perf_counter()
        model.train()
        for positions in torch.randperm(len(splits.train)).split(spec.train.batch_size):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(splits.train_views(positions, epoch)), splits.train.labels[positions]).backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        with torch.no_grad():
            wrong = sum((model(splits.inputs(splits.val, slice(i, i + 256))).argmax(1) != splits.val.labels[i:i + 256])
                        .sum().item() for i in range(0, len(splits.val), 256))
        error = wrong / len(task.splits.val)
        if error <= best:
            best, best_state = error, copy.deepcopy(model.state_dict())
        times.append(time.perf_counter() - start)
    assert best_state is not None
    return statistics.median(times[1:])


def measure_round(case: dict, storage: Path) -> dict:
    """One banray group bracketed by the plain loop, before and after: this machine's speed drifts by tens
    of percent within minutes, and the mean of the two brackets the group's time."""
    plain_before = plain_epoch_s(case)
    banray_s = banray_epoch_s(case, storage)
    plain_after = plain_epoch_s(case)
    plain_s = statistics.mean([plain_before, plain_after])
    return {"banray_epoch_s": banray_s, "plain_epoch_s": plain_s, "plain_before_after_s": [plain_before, plain_after],
            "ratio": plain_s / banray_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    torch.set_num_threads(1)  # a trial's worker has cpus_per_worker = 1
    run_groups_here(TrainSpec.model_fields["checkpoint_every_s"].default)  # as a sweep's driver does
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(fakedata)  # the trials' processes cannot import tests/
    # The generated CIFAR files cannot match torchvision's checksums, in the trials' processes too.
    with ray_internals.loopback_only():
        ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False,
                 runtime_env={"worker_process_setup_hook": fakedata.allow_unverified_cifar})
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for case in cases(Path(folder) / "data"):
            rounds = [measure_round(case, Path(folder) / f"runs-{case['name']}-{i}") for i in range(case["rounds"])]
            middle = statistics.median_low(r["ratio"] for r in rounds)  # a round's own ratio
            median = next(r for r in rounds if r["ratio"] == middle)
            results.append({"case": case["name"], "epochs": case["train"]["epochs"], **median,
                            "ratios": [r["ratio"] for r in rounds], "rounds": rounds})
    sweep.disconnect()
    write("whole_epoch", {
        "what": "an epoch as a banray trial runs it (train + validation + checkpoint when at least as good + report "
                "+ MLflow, in a one-trial group run by group.run_group) vs a plain loop (train + validation + "
                "best weights kept), 1 thread, CPU; ratio = plain epoch time / banray's, the median round's (each round "
                "one group bracketed by the plain loop)",
        "results": results,
        "ratio": min(r["ratio"] for r in results),
    })


if __name__ == "__main__":
    main()
