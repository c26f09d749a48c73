"""Dataset files generated in the exact on-disk formats of the real ones (nothing can be downloaded here).

- CIFAR-10 / CIFAR-100: the "python version" archives' extracted folders, as torchvision reads them:
  pickled dicts (protocol 2, str keys as Python 2 wrote them) of uint8 rows of 3072 = 3×32×32 values.
- PTB: Mikolov's ptb.{train,valid,test}.txt: one sentence per line, words separated by spaces, rare
  words as '<unk>'.
torchvision checks the real archives' MD5 sums, which generated files cannot match: `allow_unverified_cifar`
replaces only that check (by a file-exists check), and must run in every process that loads CIFAR.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np


def allow_unverified_cifar() -> None:
    import torchvision.datasets.cifar as cifar

    cifar.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)


def _images(rng, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Class-dependent colour plus noise, so that a tiny model can learn something in an epoch."""
    colours = np.linspace(30, 225, num_classes)
    base = colours[labels][:, None] + rng.normal(0, 40, size=(len(labels), 3072))
    return np.clip(base, 0, 255).astype(np.uint8)


def _dump(path: Path, entry: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 50, test: int = 100, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
        labels = np.arange(count) % 10
        rng.shuffle(labels)
        _dump(folder / name, {
            "batch_label": f"{name} of 5", "labels": labels.tolist(), "data": _images(rng, labels, 10),
            "filenames": [f"img_{i:05d}.png" for i in range(count)],
        })
    _dump(folder / "batches.meta", {
        "num_cases_per_batch": per_batch, "num_vis": 3072,
        "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    })
    return folder


def write_cifar100(root: Path, train: int = 400, test: int = 200, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", train), ("test", test)):
        fine = np.arange(count) % 100
        rng.shuffle(fine)
        _dump(folder / name, {
            "filenames": [f"img_{i:05d}.png" for i in range(count)], "batch_label": f"{name} batch 1 of 1",
            "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(), "data": _images(rng, fine, 100),
        })
    _dump(folder / "meta", {
        "fine_label_names": [f"class_{i}" for i in range(100)],
        "coarse_label_names": [f"superclass_{i}" for i in range(20)],
    })
    return folder


def write_ptb(root: Path, sentences: tuple[int, int, int] = (400, 60, 60), vocabulary: int = 40, seed: int = 0) -> Path:
    """A corpus from a small Markov chain over `vocabulary` words, with '<unk>' standing for rare ones."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(vocabulary - 1)] + ["<unk>"]
    transitions = rng.dirichlet(np.full(vocabulary, 0.1), size=vocabulary)
    root.mkdir(parents=True, exist_ok=True)
    for name, count in zip(("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"), sentences):
        lines = []
        for _ in range(count):
            current, sentence = rng.integers(vocabulary), []
            for _ in range(rng.integers(4, 15)):
                current = rng.choice(vocabulary, p=transitions[current])
                sentence.append(words[current])
            lines.append(" " + " ".join(sentence) + " \n")  # PTB lines start and end with a space
        (root / name).write_text("".join(lines))
    return root
