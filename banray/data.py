"""Dataset registry and the evaluation protocol's splits.

A dataset builder returns a fixed test split and a training pool; `load_splits` carves the
validation split out of the training pool with `data.seed`. Model selection uses validation only;
the test split is evaluated once per finished generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from banray.registry import Registry


@dataclass
class Pool:
    """What a dataset builder returns: the training pool (split into train/val later) and the test set."""

    train_pool: Dataset
    test: Dataset
    labels: np.ndarray  # labels of train_pool, for a stratified validation split
    num_classes: int
    input_shape: tuple[int, ...]


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]


DatasetBuilder = Callable[[str], Pool]
DATASETS: Registry[DatasetBuilder] = Registry("dataset")

# The test split of the embedded datasets never moves with data.seed.
_TEST_SPLIT_SEED = 20180512
_TEST_FRACTION = 0.2


def _tensor_pool(x: np.ndarray, y: np.ndarray, num_classes: int) -> Pool:
    from sklearn.model_selection import train_test_split

    x_pool, x_test, y_pool, y_test = train_test_split(
        x, y, test_size=_TEST_FRACTION, random_state=_TEST_SPLIT_SEED, stratify=y
    )
    as_dataset = lambda xs, ys: TensorDataset(torch.from_numpy(xs), torch.from_numpy(ys))  # noqa: E731
    return Pool(as_dataset(x_pool, y_pool), as_dataset(x_test, y_test), y_pool, num_classes, tuple(x.shape[1:]))


@DATASETS.register("digits")
def digits(root: str) -> Pool:
    """scikit-learn's 8×8 handwritten digits (1797 images, 10 classes), shipped inside scikit-learn."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    return _tensor_pool(x, bunch.target.astype(np.int64), num_classes=10)


@DATASETS.register("synthetic")
def synthetic(root: str) -> Pool:
    """600 digits-shaped (1×8×8) samples from 4 Gaussian class prototypes with noise: learnable in an epoch."""
    rng = np.random.default_rng(0)
    num_classes, per_class = 4, 150
    prototypes = rng.normal(size=(num_classes, 1, 8, 8)).astype(np.float32)
    y = np.repeat(np.arange(num_classes), per_class)
    x = prototypes[y] + rng.normal(scale=1.5, size=(len(y), 1, 8, 8)).astype(np.float32)
    return _tensor_pool(x, y.astype(np.int64), num_classes=num_classes)


def load_splits(dataset: str, root: str, val_fraction: float, seed: int) -> Splits:
    """Train / validation (stratified, seeded by `seed`) / fixed test splits of `dataset`."""
    from sklearn.model_selection import train_test_split

    pool = DATASETS[dataset](root)
    indices = np.arange(len(pool.labels))
    train_idx, val_idx = train_test_split(
        indices, test_size=val_fraction, random_state=seed, stratify=pool.labels
    )
    return Splits(
        train=Subset(pool.train_pool, train_idx.tolist()),
        val=Subset(pool.train_pool, val_idx.tolist()),
        test=pool.test,
        num_classes=pool.num_classes,
        input_shape=pool.input_shape,
    )
