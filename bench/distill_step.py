"""(b) A BAN/KD step against a CE step: online teacher, and teacher logits from the shared cache.

Teacher and student are the same WRN (born again) on CIFAR-shaped data with the standard augmentation
(files in CIFAR-10's on-disk format, generated). Per epoch of the training split, interleaved and repeated:
- CE: the student on the labels (what generation 0 pays);
- online BAN: the teacher's forward pass (inference mode) on each batch, then the student;
- cached BAN: the teacher's logits of each sample's view, looked up by index, then the student — plus
  the cost of building the cache (one teacher pass over every epoch's views, at a large batch, in
  inference mode), divided by the number of trials that share it.
Ratios are to the CE epoch (medians). No Ray, no MLflow.

Run: .venv/bin/python -m bench.distill_step   (about 3 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from banray.catalog.losses import get_objective
from banray.catalog.models import MODELS, build_model
from banray.spec import DataSpec, DistillSpec, TrainSpec
from banray.training import teacher_cache
from banray.training.checkpoint import ModelIdentity
from banray.training.loop import make_optimizer
from banray.training.tasks import make_task
from banray.training.teacher import OnlineTeacher
from bench.common import write

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import fakedata

fakedata.allow_unverified_cifar()

WRN = {"depth": 10, "widen_factor": 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--trials", type=int, default=4, help="trials sharing one teacher's cache")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        fakedata.write_cifar10(root, per_batch=200, test=100)
        data = DataSpec(dataset="cifar10", root=str(root))
        train = TrainSpec(epochs=100, batch_size=args.batch_size, lr=0.05)
        task = make_task(data, train, seed=0)
        device = torch.device("cpu")

        def wrn(seed):
            torch.manual_seed(seed)
            return build_model("wrn", num_classes=10, input_shape=(3, 32, 32), **WRN)

        teacher = wrn(0).eval().requires_grad_(False)
        epochs = 1 + args.repeats  # one warm-up epoch, then one per repeat
        identity = ModelIdentity(arch="wrn", kwargs=WRN, revision=MODELS.revision("wrn"), num_classes=10,
                                 input_shape=[3, 32, 32])
        cached = teacher_cache.CachedTeacher(teacher, identity, task.splits, str(root / "cache"), epochs, "float16",
                                             device)
        start = time.perf_counter()
        for epoch in range(1, epochs + 1):  # the first reader of each epoch builds it; here, all of them
            cached.for_epoch(epoch)
        build_per_epoch = (time.perf_counter() - start) / epochs

        variants = {"ce": (get_objective("ce"), None), "online": (get_objective("ban"), OnlineTeacher(teacher)),
                    "cached": (get_objective("ban"), cached)}
        students = {}
        for name in variants:
            model = wrn(1)
            optimizer = make_optimizer(model.parameters(), train)

            def step(loss, optimizer=optimizer):
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            students[name] = (model, step)

        def epoch(name, number):
            objective, source = variants[name]
            model, step = students[name]
            started = time.perf_counter()
            task.train_epoch(model, source, objective, DistillSpec(temperature=1.0).loss_params(), step, device, number)
            return time.perf_counter() - started

        for name in variants:
            epoch(name, 1)  # warm-up
        times = {name: [] for name in variants}
        for repeat in range(args.repeats):
            names = list(variants) if repeat % 2 == 0 else list(variants)[::-1]
            for name in names:
                times[name].append(epoch(name, 2 + repeat))
    ce = times["ce"]
    online_ratio = statistics.median(o / c for o, c in zip(times["online"], ce))
    cached_lookup_ratio = statistics.median(k / c for k, c in zip(times["cached"], ce))
    cached_ratio = statistics.median((k + build_per_epoch / args.trials) / c for k, c in zip(times["cached"], ce))
    steps = -(-len(task.splits.train) // args.batch_size)
    write("distill_step", {
        "what": f"WRN-{WRN['depth']}-{WRN['widen_factor']} teacher = student, CIFAR-shaped data with crop+flip, "
                f"batch {args.batch_size}, {args.threads} thread(s), CPU; per-epoch times, ratio to a CE epoch",
        "steps_per_epoch": steps,
        "trials_sharing_the_cache": args.trials,
        "ce_epoch_s": statistics.median(times["ce"]),
        "online_epoch_s": statistics.median(times["online"]),
        "cached_epoch_s": statistics.median(times["cached"]),
        "cache_build_per_epoch_s": build_per_epoch,
        "online_ratio": online_ratio,
        "cached_lookup_only_ratio": cached_lookup_ratio,
        "cached_ratio": cached_ratio,
        "cache_dtype": "float16",
    })


if __name__ == "__main__":
    main()
