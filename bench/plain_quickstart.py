"""The quickstart's work as a hand-written PyTorch script: what `banray sweep sweeps/quickstart.yaml` would
cost if the framework cost nothing.

Per chain, in its own process (the chains run side by side, one core each): the teacher, BAN-1 and BAN-2
(each taught by the previous generation's selected model, teacher-only cross-entropy at T = 1), and the
control teacher′, each of `trials` trials of the quickstart's recipe (CNN width 16, SGD 0.05 with momentum
0.9 and weight decay 5e-4, cosine schedule, batch 32, 10 epochs); every epoch is validated and the best
epoch's weights kept in memory; the best trial of a generation is selected on validation and evaluated
once on the test split. The split is the quickstart's: scikit-learn's digits, the same fixed test split and
a stratified 20% validation split seeded 0. Nothing is written, logged or checkpointed.

Run: .venv/bin/python -m bench.plain_quickstart   (prints its wall time; bench.quickstart times it beside banray)
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

EPOCHS, BATCH, LR, MOMENTUM, WEIGHT_DECAY, WIDTH = 10, 32, 0.05, 0.9, 5e-4, 16


def digits_splits(seed: int = 0):
    """(train, val, test) TensorDatasets: banray's fixed test split of digits and its validation split."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    x_pool, x_test, y_pool, y_test = train_test_split(x, y, test_size=0.2, random_state=20180512, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(x_pool, y_pool, test_size=0.2, random_state=seed, stratify=y_pool)
    tensors = lambda a, b: TensorDataset(torch.from_numpy(a), torch.from_numpy(b))  # noqa: E731
    return tensors(x_train, y_train), tensors(x_val, y_val), tensors(x_test, y_test)


def cnn(num_classes: int = 10) -> nn.Module:
    """banray's `cnn` at width 16, written out: two 3×3 conv-BN-ReLU stages, pooled to 4×4, a linear head."""
    return nn.Sequential(
        nn.Conv2d(1, WIDTH, 3, padding=1, bias=False), nn.BatchNorm2d(WIDTH), nn.ReLU(inplace=True),
        nn.Conv2d(WIDTH, 2 * WIDTH, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(2 * WIDTH),
        nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(2 * WIDTH * 16, num_classes),
    )


@torch.no_grad()
def error(model: nn.Module, data: TensorDataset) -> float:
    model.eval()
    x, y = data.tensors
    return (model(x).argmax(1) != y).float().mean().item()


def train_trial(seed: int, splits, teacher: nn.Module | None, epochs: int = EPOCHS,
                batch: int = BATCH) -> tuple[float, nn.Module]:
    """One trial: (best validation error, the model at its best epoch)."""
    train, val, _ = splits
    torch.manual_seed(seed)
    model = cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loader = DataLoader(train, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(seed))
    best, best_state = float("inf"), None
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            logits = model(x)
            if teacher is None:
                loss = F.cross_entropy(logits, y)
            else:
                with torch.no_grad():
                    soft = F.softmax(teacher(x), 1)
                loss = -(soft * F.log_softmax(logits, 1)).sum(1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
        value = error(model, val)
        if value <= best:
            best, best_state = value, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return best, model.eval().requires_grad_(False)


def generation(seeds: list[int], splits, teacher: nn.Module | None) -> tuple[float, nn.Module]:
    """The best of the trials on validation, evaluated once on the test split."""
    _, model = min((train_trial(seed, splits, teacher) for seed in seeds), key=lambda found: found[0])
    return error(model, splits[2]), model


def chain(args: tuple[int, int, int]) -> dict:
    index, generations, trials = args
    torch.set_num_threads(1)
    splits = digits_splits()
    seeds = lambda g, arm=0: [1000 * index + 100 * arm + 10 * g + t for t in range(trials)]  # noqa: E731
    test_errors, teacher = [], None
    for g in range(generations + 1):
        test_error, teacher = generation(seeds(g), splits, teacher)
        test_errors.append(test_error)
    control_error, _ = generation(seeds(0, arm=1), splits, None)
    return {"chain": index, "test_errors": test_errors, "control_test_error": control_error}


def run(chains: int = 2, generations: int = 2, trials: int = 2) -> dict:
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(chains) as pool:
        results = pool.map(chain, [(c, generations, trials) for c in range(chains)])
    return {"wall_s": time.perf_counter() - start, "chains": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--trials", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(run(args.chains, args.generations, args.trials), indent=2))


if __name__ == "__main__":
    main()
