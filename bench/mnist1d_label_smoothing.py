"""Is label smoothing's gain on MNIST-1D banray's or the data's? The reference recipe in a plain PyTorch loop.

The 40-chain `sweeps/mnist1d.yaml` run (docs/results/mnist1d) found the Label-smoothing arm (ε = 0.1) about
3 points better than its Teacher. This loop checks it without banray's training code: MNIST-1D's reference
training loop (tests/test_mnist1d.py's `paper_recipe_accuracy`: Adam, lr 1e-2, batch 100 in order from all 4000
training signals, the last model scored on the 1000 test signals), the same seeds with ε = 0 and ε = 0.1.

Run: .venv/bin/python -m bench.mnist1d_label_smoothing [--seeds 5] [--steps 6000]   (about 25 s a seed on 2 cores)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from banray.catalog.models import build_model
from bench.common import write

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_mnist1d import SHAPE, _arrays, _pool  # noqa: E402


def test_error(seed: int, steps: int, label_smoothing: float) -> float:
    """Test error (%) of cnn1d after the reference loop, its label term smoothed by `label_smoothing`."""
    pool = _pool()
    x, y = _arrays(pool.train)
    x_test, y_test = _arrays(pool.test)
    torch.manual_seed(seed)
    model = build_model("cnn1d", num_classes=10, input_shape=SHAPE)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=0)
    for step in range(steps + 1):
        start = (step * 100) % len(x)
        loss = F.cross_entropy(model(x[start:start + 100]), y[start:start + 100], label_smoothing=label_smoothing)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return 100 * (model(x_test).argmax(-1) != y_test).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6000)
    args = parser.parse_args()
    errors = {eps: [round(test_error(seed, args.steps, eps), 2) for seed in range(args.seeds)] for eps in (0.0, 0.1)}
    differences = [smooth - plain for plain, smooth in zip(errors[0.0], errors[0.1])]
    result = {
        "recipe": f"reference loop, cnn1d, {args.steps} steps, last model, {args.seeds} seeds (the same for both)",
        "test_error": {str(eps): values for eps, values in errors.items()},
        "mean": {str(eps): round(statistics.mean(values), 2) for eps, values in errors.items()},
        "smoothed_minus_plain": {"per_seed": [round(d, 2) for d in differences],
                                 "mean": round(statistics.mean(differences), 2),
                                 "sd": round(statistics.stdev(differences), 2) if len(differences) > 1 else None},
    }
    print(result, flush=True)
    write("mnist1d_label_smoothing", result)


if __name__ == "__main__":
    main()
