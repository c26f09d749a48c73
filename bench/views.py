"""(g) The training views alone, and a whole CIFAR-shaped WRN-16-4 epoch, before and after batching the views.

(a) The view pipeline on one thread over the training split of a 10,000-image CIFAR-shaped pool (generated files
in CIFAR-10's format, read through torchvision): images/s of the old per-sample path (a copy of main's
Augmented + CropFlip + ToTensor/Normalize + DataLoader collate, kept below, labelled, as the stand-in for the
code it replaced) against banray's batched path (Splits.train_views, in an epoch's shuffled batches of 128).
(b) One training epoch of a WRN-16-4 on CIFAR-shaped data, CPU, one thread, through make_task(...).train_epoch
(the worker loop's epoch, no Ray): in a subprocess on this checkout and, with --before PATH, on another
checkout (main's), alternated over rounds; the second epoch of each process is timed (the first pays the
allocator's warm-up). The epoch is a subset of CIFAR's: the pool is `--pool` images (256 train at 320), so it
takes seconds, not hours; the views' share of it is what changes.

Run: .venv/bin/python -m bench.views --before ../wt-views-before   (about 3 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from banray.catalog.data import load_splits
from bench.common import write

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))
import fakedata  # noqa: E402

fakedata.allow_unverified_cifar()

BATCH = 128
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


# ---- The OLD per-sample path, copied from main before the batched views (bench only: the stand-in for it) ----
def old_sample_seed(seed: int, epoch: int, index: int) -> int:
    mask = 2**64 - 1
    state = 0
    for part in (seed, epoch, index):
        state = (state + part + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        state = z ^ (z >> 31)
    return state >> 1


class OldCropFlip:
    def __init__(self, padding: int = 4):
        self.padding = padding

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        height, width = image.shape[-2:]
        padded = torch.nn.functional.pad(image[None], [self.padding] * 4, mode="reflect")[0]
        top, left = torch.randint(0, 2 * self.padding + 1, (2,), generator=generator).tolist()
        crop = padded[:, top : top + height, left : left + width]
        return crop.flip(-1) if torch.rand((), generator=generator).item() < 0.5 else crop


class OldAugmented(Dataset):
    def __init__(self, base: Dataset, augment: OldCropFlip, seed: int, epoch: int):
        self.base, self.augment, self.seed, self.epoch = base, augment, seed, epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        generator = torch.Generator()
        generator.manual_seed(old_sample_seed(self.seed, self.epoch, index))
        return self.augment(image, generator), label


class OldIndexed(Dataset):
    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        x, y = self.base[index]
        return x, y, index


def old_loader(root: Path, train_positions: list[int], epoch: int) -> DataLoader:
    from torchvision import datasets
    from torchvision import transforms as T

    pool = datasets.CIFAR10(str(root), train=True, transform=T.Compose([T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)]))
    train = Subset(OldAugmented(pool, OldCropFlip(4), seed=0, epoch=epoch), train_positions)
    return DataLoader(OldIndexed(train), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(epoch))
# ---- end of the old path ----


def images_per_s(make_epoch, count: int, repeats: int) -> float:
    """The best of `repeats` epochs (the machine is shared: the best is the least disturbed)."""
    best = float("inf")
    for epoch in range(1, repeats + 1):
        start = time.perf_counter()
        make_epoch(epoch)
        best = min(best, time.perf_counter() - start)
    return count / best


def view_pipeline(root: Path) -> dict:
    splits = load_splits("cifar10", str(root), 0.01, seed=0)
    count = len(splits.train)

    def old_epoch(epoch):
        for _ in old_loader(root, splits.train.indices.tolist(), epoch):
            pass

    def new_epoch(epoch):
        order = torch.randperm(count, generator=torch.Generator().manual_seed(epoch))
        for positions in order.split(BATCH):
            splits.train_views(positions, epoch)

    old, new = images_per_s(old_epoch, count, 2), images_per_s(new_epoch, count, 5)
    return {"images": count, "batch": BATCH, "old_per_sample_images_per_s": old, "batched_images_per_s": new,
            "speedup": new / old}


EPOCH_SCRIPT = """
import json, sys, time, torch
sys.path.insert(0, {tests!r})
import fakedata
fakedata.allow_unverified_cifar()
from banray.catalog.losses import get_objective
from banray.catalog.models import build_model
from banray.spec import DistillSpec, parse_spec
from banray.training.tasks import make_task
torch.set_num_threads(1)
spec = parse_spec({{"name": "views-bench", "generations": 1, "data": {{"dataset": "cifar10", "root": {root!r}}},
                   "model": {{"arch": "wrn", "kwargs": {{"depth": 16, "widen_factor": 4}}}},
                   "train": {{"epochs": 2, "batch_size": 64, "lr": 0.05, "momentum": 0.9}}}})
task = make_task(spec.data, spec.train, seed=0)
torch.manual_seed(0)
model = build_model("wrn", num_classes=10, input_shape=(3, 32, 32), depth=16, widen_factor=4)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
def step(loss):
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
times = []
for epoch in (1, 2):
    start = time.perf_counter()
    task.train_epoch(model, None, get_objective("ce"), DistillSpec().loss_params(), step, torch.device("cpu"), epoch)
    times.append(time.perf_counter() - start)
print(json.dumps({{"epoch_s": times[1], "samples": len(task.splits.train)}}))
"""


def epoch_s(checkout: Path, root: Path) -> dict:
    script = EPOCH_SCRIPT.format(tests=str(TESTS), root=str(root))
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def whole_epoch(before: Path | None, root: Path, rounds: int) -> dict:
    here = Path(__file__).resolve().parents[1]
    after_s, before_s, samples = [], [], 0
    for _ in range(rounds):
        if before is not None:
            before_s.append(epoch_s(before, root)["epoch_s"])
        measured = epoch_s(here, root)
        after_s.append(measured["epoch_s"])
        samples = measured["samples"]
    result = {"train_samples": samples, "after_epoch_s": statistics.median(after_s), "after_rounds_s": after_s}
    if before is not None:
        result |= {"before_epoch_s": statistics.median(before_s), "before_rounds_s": before_s,
                   "ratio_before_over_after": statistics.median(before_s) / statistics.median(after_s)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="a checkout of the code to compare with (main's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pool", type=int, default=320, help="images in the WRN epoch's CIFAR-shaped pool")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        views_root, epoch_root = Path(folder) / "views", Path(folder) / "epoch"
        fakedata.write_cifar10(views_root, per_batch=2000, test=100)
        fakedata.write_cifar10(epoch_root, per_batch=args.pool // 5, test=100)
        pipeline = view_pipeline(views_root)
        epoch = whole_epoch(args.before, epoch_root, args.rounds)
    write("views", {
        "what": "(a) training views alone, 1 thread, CPU: the old per-sample path (main's Augmented + CropFlip + "
                "ToTensor/Normalize + DataLoader collate, copied into the bench) vs the batched Splits.train_views, "
                "the best of several epochs each; (b) one WRN-16-4 training epoch on a subset of CIFAR-shaped data, "
                "1 thread, CPU, through make_task(...).train_epoch, main's checkout (before) vs this one (after), "
                "alternated, the median round's second epoch",
        "view_pipeline": pipeline,
        "whole_epoch": epoch,
    })


if __name__ == "__main__":
    main()
