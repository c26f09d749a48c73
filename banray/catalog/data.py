"""Dataset registry and the evaluation protocol's splits.

Two kinds of dataset, each registered by name:
- classification (`digits`, `synthetic`, `mnist1d`, `cifar10`, `cifar100`): a builder returns a training pool
  and a fixed test set, each as tensors (images as stored: uint8); `load_splits` carves the validation split
  out of the training pool with `data.seed`. The training split is seen through the dataset's augmentation,
  made a batch at once on the training device (Splits.train_views), the validation split without it.
- language modelling (`ptb`): a builder returns a `Corpus` whose train / valid / test files are the
  splits (PTB's standard Mikolov split).
Model selection uses validation only; the test split is evaluated once per finished generation.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import math
import os
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from banray.catalog.local_cache import user_cache
from banray.catalog.registry import Registry

Kind = Literal["classification", "language_model"]


class DatasetMissing(Exception):
    """The dataset's files are not where `data.root` says; the message says how to fix it."""


@dataclass
class Samples:
    """A split as tensors: its inputs as stored (uint8 images, or float samples), labels, and each sample's index
    in the pool (what its training views are drawn from)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device) -> Samples:
        return Samples(*(t.to(device) for t in (self.inputs, self.labels, self.indices)))


@dataclass
class Pool:
    """What a classification builder returns."""

    train: Samples  # the training pool, as stored
    test: Samples
    num_classes: int
    input_shape: tuple[int, ...]
    normalise: Normalise | None = None  # uint8 images → the float inputs a model sees; None: inputs are floats
    augment: CropFlip | None = None  # the training augmentation, if any


@dataclass
class Splits:
    train: Samples
    val: Samples
    test: Samples
    num_classes: int
    input_shape: tuple[int, ...]
    dataset: str
    split_hash: str  # which samples are in train and validation (see split_hash)
    seed: int  # the data seed: with the epoch and the sample, it draws each training view
    normalise: Normalise | None = None
    augment: CropFlip | None = None
    _placed: dict[str, Splits] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def augmentation(self) -> str:
        """The augmentation policy's name ('none' when the training view is the data as it is)."""
        return self.augment.policy if self.augment is not None else "none"

    @property
    def augmentation_seed(self) -> int | None:
        """The seed the augmentation draws its views from (with the epoch and the sample); None without one."""
        return self.seed if self.augment is not None else None

    def on(self, device) -> Splits:
        """These splits with every tensor on `device`: moved there once per process and device."""
        key = str(torch.device(device))
        if key not in self._placed:
            self._placed[key] = replace(
                self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device),
                normalise=self.normalise.to(device) if self.normalise is not None else None,
            )
        return self._placed[key]

    def inputs(self, samples: Samples, positions, dtype=torch.float32) -> torch.Tensor:
        """The model's inputs of `samples` at `positions` (a slice or an index tensor on their device), unaugmented."""
        stored = samples.inputs[positions]
        return self.normalise(stored, dtype) if self.normalise is not None else stored.to(dtype)

    def train_views(self, positions: torch.Tensor, epoch: int | None, dtype=torch.float32) -> torch.Tensor:
        """The views of the training samples at `positions` (on the splits' device) in `epoch`: each a function of
        (seed, epoch, pool index) only, whatever batch it is in. `epoch` None, or no augmentation: unaugmented."""
        if self.augment is None or epoch is None:
            return self.inputs(self.train, positions, dtype)
        images = self.augment(self.train.inputs[positions], self.train.indices[positions], self.seed, epoch)
        return self.normalise(images, dtype)


@dataclass
class Corpus:
    """A tokenised corpus: one id tensor per split, words numbered in order of first appearance in train."""

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    vocabulary: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.vocabulary)

    @functools.cached_property
    def split_hash(self) -> str:
        """The identity of its train/validation split: the token ids of both files (see split_hash)."""
        return split_hash(self.train.numpy(), self.valid.numpy())


@dataclass(frozen=True)
class Headline:
    """The number a kind of dataset is reported and planned by."""

    metric: str  # the report's headline metric
    label: str  # what the table shows
    unit: str  # the table's unit ("" for none)
    gain_unit: str  # a difference of it, as a gain to detect is named


# One headline per kind of dataset: the report's table and plot, and plan's gain to detect.
_HEADLINES: dict[Kind, Headline] = {
    "classification": Headline("test_error", "test error", "%", "points of test error"),
    "language_model": Headline("test_perplexity", "test perplexity", "", "perplexity"),
}


@dataclass(frozen=True)
class DatasetInfo:
    """What is known of a dataset without its files: what specs, plans and reports ask of it."""

    name: str
    kind: Kind
    num_classes: int  # classes (a language model's vocabulary)
    input_shape: tuple[int, ...]  # one sample's (C, H, W); () for a token stream, whose chunks are train.bptt long
    train_size: int  # samples in the training pool (tokens in the training file)
    # What a seed changes in the data a model trains on (the report's caption says what its intervals cover):
    augmented: bool = False  # the training split is seen through a random augmentation, drawn from the data seed
    carved_validation: bool = True  # the validation split is carved out of the training pool with the data seed
    shuffled: bool = True  # the training samples come in an order drawn from each trial's seed, every epoch

    @property
    def headline(self) -> Headline:
        return _HEADLINES[self.kind]

    @property
    def seeded_data(self) -> bool:
        """Whether the data seed changes what a model trains on (its split or augmentation): only then do chains
        draw their own data, or share one draw under data.shared_split."""
        return self.carved_validation or self.augmented

    def model_input_shape(self, bptt: int) -> tuple[int, ...]:
        """The input_shape a model of this dataset is built with: a language model's is its BPTT length."""
        return (bptt, *self.input_shape) if self.kind == "language_model" else self.input_shape


@dataclass(frozen=True)
class DatasetEntry:
    info: DatasetInfo
    build: Callable[..., Any]  # (root, download) -> Pool | Corpus


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def _register(name: str, kind: Kind, *, num_classes: int, input_shape: tuple[int, ...], train_size: int,
              augmented: bool = False, carved_validation: bool = True, shuffled: bool = True):
    def add(build):
        info = DatasetInfo(name, kind, num_classes, input_shape, train_size, augmented=augmented,
                           carved_validation=carved_validation, shuffled=shuffled)
        DATASETS.register(name)(DatasetEntry(info, build))
        return build

    return add


def dataset_info(name: str) -> DatasetInfo:
    """The registered facts of dataset `name` (KeyError naming the allowed ones for an unknown name)."""
    return DATASETS[name].info


def dataset_kind(name: str) -> Kind:
    return dataset_info(name).kind


# The test split of the embedded datasets never moves with data.seed.
_TEST_SPLIT_SEED = 20180512
_TEST_FRACTION = 0.2


def cached_arrays(name: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """`build()`'s arrays, kept in the user cache under `name` (which must name everything they depend on,
    library versions included). A trial process would otherwise import scikit-learn (and SciPy) to load
    the digits and draw a split: seconds of CPU per process, where reading the arrays takes milliseconds."""
    path = user_cache() / "arrays" / f"{name}.npz"
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}
    except (OSError, ValueError):  # not there yet, or unreadable: build it again
        pass
    arrays = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.stem}.partial-{uuid.uuid4().hex}.npz")
        np.savez(partial, **arrays)
        os.replace(partial, path)  # whole or not at all: trials on one machine may build it side by side
    except OSError:
        pass  # no writable cache: built again next time
    return arrays


def _sklearn(name: str) -> str:
    """A cache entry's name for arrays scikit-learn made: its version is part of what they depend on."""
    return f"{name}-sklearn{importlib.metadata.version('scikit-learn')}"


def stratified_split(labels: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's stratified `train_test_split` of `labels`' indices (train, held out), from the cache."""
    labels = np.ascontiguousarray(labels)
    key = hashlib.sha256(labels.tobytes() + f"{labels.dtype}-{test_size!r}-{seed}".encode()).hexdigest()[:24]

    def split() -> dict[str, np.ndarray]:
        from sklearn.model_selection import train_test_split

        kept, held_out = train_test_split(np.arange(len(labels)), test_size=test_size, random_state=seed,
                                          stratify=labels)
        return {"kept": kept, "held_out": held_out}

    found = cached_arrays(_sklearn(f"split-{key}"), split)
    return found["kept"], found["held_out"]


def split_hash(train: np.ndarray, val: np.ndarray) -> str:
    """What a train/validation split is, whatever seed or library version drew it: sha256 of its training
    then its validation indices (a corpus's token ids), each as 64-bit integers behind its length."""
    digest = hashlib.sha256()
    for part in (train, val):
        values = np.ascontiguousarray(part, dtype=np.int64)
        digest.update(len(values).to_bytes(8, "little"))
        digest.update(values.tobytes())
    return digest.hexdigest()[:16]


def _samples(x: np.ndarray, y: np.ndarray) -> Samples:
    return Samples(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)), torch.arange(len(y)))


def _tensor_pool(x: np.ndarray, y: np.ndarray, num_classes: int) -> Pool:
    kept, held_out = stratified_split(y, _TEST_FRACTION, _TEST_SPLIT_SEED)
    return Pool(_samples(x[kept], y[kept]), _samples(x[held_out], y[held_out]), num_classes, tuple(x.shape[1:]))


@_register("digits", "classification", num_classes=10, input_shape=(1, 8, 8), train_size=1437)
def digits(root: str, download: bool) -> Pool:
    """scikit-learn's 8×8 handwritten digits (1797 images, 10 classes), shipped inside scikit-learn."""

    def load() -> dict[str, np.ndarray]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return {"images": bunch.images, "target": bunch.target}

    found = cached_arrays(_sklearn("digits"), load)
    x = (found["images"] / 16.0).astype(np.float32)[:, None, :, :]
    return _tensor_pool(x, found["target"].astype(np.int64), num_classes=10)


@_register("synthetic", "classification", num_classes=4, input_shape=(1, 8, 8), train_size=480)
def synthetic(root: str, download: bool) -> Pool:
    """600 digits-shaped (1×8×8) samples from 4 Gaussian class prototypes with noise: learnable in an epoch."""
    rng = np.random.default_rng(0)
    num_classes, per_class = 4, 150
    prototypes = rng.normal(size=(num_classes, 1, 8, 8)).astype(np.float32)
    y = np.repeat(np.arange(num_classes), per_class)
    x = prototypes[y] + rng.normal(scale=1.5, size=(len(y), 1, 8, 8)).astype(np.float32)
    return _tensor_pool(x, y.astype(np.int64), num_classes=num_classes)


@functools.cache
def _mnist1d_arrays() -> dict[str, np.ndarray]:
    """The generated MNIST-1D arrays, once per process and from the user cache (generating them takes seconds)."""
    arrays = cached_arrays(f"mnist1d-{importlib.metadata.version('mnist1d')}", _generate_mnist1d)
    for array in arrays.values():
        array.setflags(write=False)  # shared by every caller in the process
    return arrays


def _generate_mnist1d() -> dict[str, np.ndarray]:
    import random

    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset seeds Python's and NumPy's global generators; restore them so loading never moves a trial's draws.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        generated = make_dataset(get_dataset_args())
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return {key: generated[key] for key in ("x", "y", "x_test", "y_test")}


@_register("mnist1d", "classification", num_classes=10, input_shape=(1, 40), train_size=4000)
def mnist1d(root: str, download: bool) -> Pool:
    """MNIST-1D (Greydanus & Kobak, *Scaling down deep learning*): 5000 signals of length 40, 10 classes, generated
    by the `mnist1d` package from its default arguments (seed 42), never downloaded. Its own split is kept: the
    4000 training signals are the pool, its 1000 test signals the fixed test split."""
    arrays = _mnist1d_arrays()
    signals = {key: arrays[key].astype(np.float32)[:, None, :] for key in ("x", "x_test")}
    return Pool(_samples(signals["x"], arrays["y"]), _samples(signals["x_test"], arrays["y_test"]), num_classes=10,
                input_shape=(1, 40))


# The training views' draws come from a counter-based hash of (data seed, epoch, sample index), computed with
# integer tensor ops: the same numbers on every device, for a whole batch at once. Its name is part of the
# augmentation policy, hence of the teacher-logit cache's key: change the draws, change VIEW_HASH.
VIEW_HASH = "lowbias32-v1"
_MASK32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B9


def _mul32(x, constant: int):
    """x × constant mod 2^32 for 0 ≤ x < 2^32, by the constant's 16-bit halves: every product stays below 2^49,
    inside int64 (a whole 32 × 32-bit product may pass 2^63 and overflow)."""
    return ((((x * (constant >> 16)) & 0xFFFF) << 16) + x * (constant & 0xFFFF)) & _MASK32


def mix32(x):
    """Wellons' lowbias32 finaliser, a well-mixing bijection of 32-bit integers; for Python ints and int64 tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _absorb(state, part):
    return mix32((state + part + _GOLDEN32) & _MASK32)


def view_draws(seed: int, epoch: int, index, span: int):
    """(top, left, flip) of sample `index`'s view in `epoch`: offsets in [0, span), flip 0 or 1. `index` is an int
    or an int64 tensor of indices below 2^32 (then each draw is a tensor like it)."""
    state = 0
    for part in (seed & _MASK32, (seed >> 32) & _MASK32, epoch & _MASK32):
        state = _absorb(state, part)
    state = _absorb(state, index)
    return _absorb(state, 1) % span, _absorb(state, 2) % span, _absorb(state, 3) >> 31


def _reflect(position: torch.Tensor, size: int) -> torch.Tensor:
    """Positions in [-size + 1, 2 size - 2] mirrored into [0, size) without repeating the edge (reflect padding)."""
    return (size - 1) - ((size - 1) - position.abs()).abs()


class Normalise:
    """uint8 images → a model's float inputs, computed as torchvision's ToTensor then Normalize compute them
    (÷255, −mean, ÷std per channel, in float32), then rounded once to the dtype asked for."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean, self.std = mean.reshape(-1, 1, 1), std.reshape(-1, 1, 1)

    def to(self, device) -> Normalise:
        return Normalise(self.mean.to(device), self.std.to(device))

    def __call__(self, images: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        return images.float().div(255).sub(self.mean).div(self.std).to(dtype)


class CropFlip:
    """The standard CIFAR augmentation, a batch at once on the images' device: reflection-pad by `padding`, crop
    back to H×W at per-sample offsets, flip horizontally with probability 1/2 — drawn by view_draws. Pure data
    movement, so it commutes with the per-channel normalisation: applied to the stored uint8 images."""

    def __init__(self, padding: int = 4):
        self.padding = padding
        self.policy = f"crop-pad{padding}-reflect+hflip/{VIEW_HASH}"

    def __call__(self, images: torch.Tensor, indices: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
        """The views of `images` (B, C, H, W), sample b's drawn from (seed, epoch, indices[b]): a gather of each
        view's rows, then of its columns (a few times faster on CPU than one four-index gather)."""
        count, channels, height, width = images.shape
        top, left, flip = view_draws(seed, epoch, indices, 2 * self.padding + 1)
        rows = _reflect(top[:, None] + torch.arange(height, device=images.device) - self.padding, height)
        columns = torch.arange(width, device=images.device)
        columns = torch.where(flip[:, None] == 1, width - 1 - columns, columns)  # a flip reads the crop backwards
        columns = _reflect(left[:, None] + columns - self.padding, width)
        shape = (count, channels, height, width)
        cropped = images.gather(2, rows[:, None, :, None].expand(shape))
        return cropped.gather(3, columns[:, None, None, :].expand(shape))

    def reference(self, image: torch.Tensor, normalise: Normalise, seed: int, epoch: int, index: int) -> torch.Tensor:
        """One sample's view the plain way (normalise, pad, slice, flip) with the draws in Python integers: what the
        batched path must equal bit for bit."""
        top, left, flip = view_draws(seed, epoch, index, 2 * self.padding + 1)
        height, width = image.shape[-2:]
        padded = torch.nn.functional.pad(normalise(image[None]), [self.padding] * 4, mode="reflect")[0]
        crop = padded[:, top : top + height, left : left + width]
        return crop.flip(-1) if flip else crop


# Per-channel statistics of the CIFAR training sets (the values the literature normalises with).
_CIFAR = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("CIFAR100", "cifar-100-python", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _cifar(name: str, root: str, download: bool) -> Pool:
    """CIFAR through torchvision's dataset classes: the standard augmentation (4-pixel reflection pad,
    random 32×32 crop, horizontal flip; see CropFlip) for training, per-channel mean/std normalisation
    everywhere."""
    from torchvision import datasets

    class_name, folder, mean, std = _CIFAR[name]
    info = dataset_info(name)  # classes and shape, as registered
    dataset_class = getattr(datasets, class_name)
    root = os.path.expanduser(root)
    try:
        pool = dataset_class(root, train=True, download=download)
        test = dataset_class(root, train=False)
    except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
        fix = (
            "the download did not produce them" if download
            else "set data.download: true on a machine with internet access, or"
        )
        raise DatasetMissing(
            f"data.root: {name} not found in {root} ({exc}); {fix} put the extracted '{folder}' folder "
            f"(from https://www.cs.toronto.edu/~kriz/) inside {root}"
        ) from None
    except OSError as exc:  # download impossible: no network, proxy, disk
        raise DatasetMissing(
            f"data.root: {name} is not in {root} and downloading it failed ({exc}); "
            f"put the extracted '{folder}' folder there by hand"
        ) from None
    return Pool(
        train=_images(pool), test=_images(test), num_classes=info.num_classes, input_shape=info.input_shape,
        normalise=Normalise(torch.tensor(mean), torch.tensor(std)), augment=CropFlip(padding=4),
    )


def _images(dataset) -> Samples:
    """A torchvision CIFAR dataset as one uint8 (N, C, H, W) tensor (its `.data` is (N, H, W, C)) and its labels."""
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    return Samples(images, torch.tensor(dataset.targets, dtype=torch.int64), torch.arange(len(images)))


@_register("cifar10", "classification", num_classes=10, input_shape=(3, 32, 32), train_size=50_000, augmented=True)
def cifar10(root: str, download: bool) -> Pool:
    return _cifar("cifar10", root, download)


@_register("cifar100", "classification", num_classes=100, input_shape=(3, 32, 32), train_size=50_000, augmented=True)
def cifar100(root: str, download: bool) -> Pool:
    return _cifar("cifar100", root, download)


PTB_FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}


def read_tokens(path: Path) -> list[str]:
    """Whitespace-separated words, each line ending with '<eos>' (the PTB language-modelling convention)."""
    tokens: list[str] = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            tokens += line.split() + ["<eos>"]
    return tokens


# 10,000 words ('<unk>' and '<eos>' included); the training pool is ptb.train.txt's words + '<eos>'s. Its splits
# are its three files and the training stream is read in one fixed column order (LanguageModelTask), so a seed
# changes neither the data nor its order: only the model's initialisation and dropout.
@_register("ptb", "language_model", num_classes=10_000, input_shape=(), train_size=929_589, carved_validation=False,
           shuffled=False)
def ptb(root: str, download: bool) -> Corpus:
    """Penn Treebank in Mikolov's preprocessed form: ptb.{train,valid,test}.txt under `data.root`
    (rare words already replaced by '<unk>'). Not downloadable here: the files must be in place."""
    folder = Path(os.path.expanduser(root))
    missing = [name for name in PTB_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise DatasetMissing(
            f"data.root: {', '.join(missing)} not found in {folder}; put the Penn Treebank files "
            "(Mikolov's 'simple-examples/data' folder) there"
        )
    tokens = {split: read_tokens(folder / name) for split, name in PTB_FILES.items()}
    vocabulary = list(dict.fromkeys(tokens["train"]))
    index = {word: i for i, word in enumerate(vocabulary)}
    unknown = index.get("<unk>")

    def encode(split: str) -> torch.Tensor:
        try:
            return torch.tensor([index[w] if w in index or unknown is None else unknown for w in tokens[split]])
        except KeyError as exc:
            raise DatasetMissing(
                f"data.root: {PTB_FILES[split]} has the word {exc} that {PTB_FILES['train']} lacks and there is "
                "no '<unk>' token to map it to"
            ) from None

    return Corpus(encode("train"), encode("valid"), encode("test"), vocabulary)


def load_corpus(dataset: str, root: str, download: bool = False) -> Corpus:
    entry = DATASETS[dataset]
    assert entry.info.kind == "language_model", f"{dataset} is a {entry.info.kind} dataset"
    return entry.build(root, download)


class SplitTooSmall(ValueError):
    """`data.val_fraction` leaves a class out of the validation or the training split."""


def _check_split_fits(dataset: str, labels: np.ndarray, val_fraction: float) -> None:
    """The stratified split needs every class at least once on each side (scikit-learn sizes the validation
    split as ceil(fraction × pool)), and two samples of every class to split at all."""
    counts = np.unique(np.asarray(labels), return_counts=True)[1]
    pool, classes = len(labels), len(counts)
    held_out = math.ceil(val_fraction * pool)
    if classes <= held_out <= pool - classes and counts.min() >= 2:
        return
    low, high = math.ceil(1e4 * classes / pool) / 1e4, math.floor(1e4 * (pool - classes) / pool) / 1e4
    raise SplitTooSmall(
        f"data.val_fraction: {val_fraction:g} is not allowed: it holds out {held_out} of the {pool} training samples "
        f"of {dataset}, but each of its {classes} classes must be in both the validation and the training split; "
        f"allowed: {low:g} to {high:g}"
    )


def _subset(samples: Samples, positions: np.ndarray) -> Samples:
    index = torch.from_numpy(np.ascontiguousarray(positions, dtype=np.int64))
    return Samples(samples.inputs[index], samples.labels[index], samples.indices[index])


def load_splits(dataset: str, root: str, val_fraction: float, seed: int, download: bool = False) -> Splits:
    """Train / validation (stratified, seeded by `seed`) / fixed test splits of `dataset`, as tensors. The training
    views of each epoch are drawn from (seed, epoch, sample) (Splits.train_views)."""
    entry = DATASETS[dataset]
    assert entry.info.kind == "classification", f"{dataset} is a {entry.info.kind} dataset"
    pool = entry.build(root, download)
    assert (pool.augment is not None) == entry.info.augmented, f"{dataset}: registered augmented={entry.info.augmented}"
    labels = pool.train.labels.numpy()
    _check_split_fits(dataset, labels, val_fraction)
    train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    return Splits(
        train=_subset(pool.train, train_idx), val=_subset(pool.train, val_idx), test=pool.test,
        num_classes=pool.num_classes, input_shape=pool.input_shape, dataset=dataset,
        split_hash=split_hash(train_idx, val_idx),
        seed=seed,  # the data seed: augmentation is shared by every trial of a chain, like the split
        normalise=pool.normalise, augment=pool.augment,
    )
