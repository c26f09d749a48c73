"""The worker loop's training steps/s against a plain PyTorch loop: same model, data, batch size, optimizer.
bench.gpu_throughput measures with it on a GPU; on CPU, (a) is bench.whole_epoch, which times the epoch a
trial runs (validation, checkpoint, report and logging included), not only its training steps.

The banray side is what train_loop_per_worker runs per epoch: ClassificationTask.train_epoch with the
objective, the worker's step function and its batches (views made a batch at once on the device).
The plain side is a hand-written loop: DataLoader, forward, cross-entropy, backward, step — with
torchvision's own random crop and flip, per sample, where the data is augmented. No Ray, no MLflow. The two alternate,
repeated, in one process on one thread; the ratio is the median of the paired ratios.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from banray.losses import get_objective
from banray.models import build_model
from banray.spec import DataSpec, DistillSpec, TrainSpec
from banray.tasks import make_task
from banray.training.loop import fast_path_student, make_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import fakedata

fakedata.allow_unverified_cifar()


def cases(root: Path) -> list[dict]:
    fakedata.write_cifar10(root, per_batch=200, test=100)
    return [
        {"name": "digits-cnn16", "data": DataSpec(dataset="digits"), "arch": "cnn", "kwargs": {"width": 16}, "epochs": 6},
        {"name": "cifar10-wrn10-1", "data": DataSpec(dataset="cifar10", root=str(root)), "arch": "wrn",
         "kwargs": {"depth": 10, "widen_factor": 1}, "epochs": 1},
    ]


class PlainTraining(Dataset):
    """The same training samples as a plain loop reads them: one at a time, normalised, through torchvision's
    usual random crop and flip where banray augments."""

    def __init__(self, splits):
        from torchvision import transforms as T

        self.splits = splits
        self.augment = None if splits.augment is None else T.Compose(
            [T.RandomCrop(32, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.splits.train)

    def __getitem__(self, index: int):
        x = self.splits.inputs(self.splits.train, slice(index, index + 1))[0]
        return (x if self.augment is None else self.augment(x)), self.splits.train.labels[index]


def synchronize(device: torch.device) -> None:
    """Wait for the accelerator, so that a timing covers the work it was handed."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(case: dict, repeats: int, device: torch.device, train: TrainSpec) -> dict:
    """Paired repeats of banray's epoch and the plain loop's, with `train`'s batch size and fast-path switches."""
    task = make_task(case["data"], train, seed=0)

    def model():
        torch.manual_seed(0)
        built = build_model(case["arch"], num_classes=task.num_classes, input_shape=task.input_shape, **case["kwargs"])
        return built.to(device)

    student = fast_path_student(model(), train, device, task.input_shape)  # as the worker prepares it
    optimizer = make_optimizer(student.parameters(), train)

    def step(loss):  # the worker's step
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(student.parameters(), train.grad_clip)
        optimizer.step()

    plain_model = model()
    plain_optimizer = make_optimizer(plain_model.parameters(), train)
    generator = torch.Generator()
    cuda = device.type == "cuda"  # the workers and pinning banray's DataLoader used on CUDA
    loader = DataLoader(PlainTraining(task.splits), batch_size=train.batch_size, shuffle=True, generator=generator,
                        num_workers=4 if cuda and task.splits.augment is not None else 0, pin_memory=cuda)
    ce = get_objective("ce")
    steps_per_epoch = len(loader)

    def banray_epochs(first):
        for epoch in range(first, first + case["epochs"]):
            task.train_epoch(student, None, ce, DistillSpec().loss_params(), step, device, epoch)

    def plain_epochs(first):
        plain_model.train()
        for epoch in range(first, first + case["epochs"]):
            generator.manual_seed(epoch)
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                plain_optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(plain_model(x), y).backward()
                plain_optimizer.step()

    banray_epochs(1), plain_epochs(1)  # warm-up: allocator, thread pools, first-call costs
    ratios, banray_rates, plain_rates = [], [], []
    for repeat in range(repeats):
        timings = {}
        order = [("banray", banray_epochs), ("plain", plain_epochs)]
        for name, run in order if repeat % 2 == 0 else order[::-1]:
            synchronize(device)
            start = time.perf_counter()
            run(2 + repeat * case["epochs"])
            synchronize(device)
            timings[name] = time.perf_counter() - start
        steps = steps_per_epoch * case["epochs"]
        banray_rates.append(steps / timings["banray"])
        plain_rates.append(steps / timings["plain"])
        ratios.append(banray_rates[-1] / plain_rates[-1])
    return {
        "case": case["name"],
        "batch_size": train.batch_size,
        "steps_per_measurement": steps_per_epoch * case["epochs"],
        "repeats": repeats,
        "banray_steps_per_s": statistics.median(banray_rates),
        "plain_steps_per_s": statistics.median(plain_rates),
        "ratio": statistics.median(ratios),
        "ratios": [round(r, 4) for r in ratios],
    }
