"""Tasks: what a kind of dataset asks of the training loop.

A task owns its data and knows how batches flow through a model: `train_epoch` runs one epoch of
student (and frozen teacher) forward passes and hands each loss to `step`, `score` measures a model
on the validation or test split, `predict` gives test-set probabilities for ensembles. The worker
loop (banray.training.loop) stays the same for every task.

- classification: images or vectors → class; the objectives see (batch, classes) logits.
- language_model: token streams, truncated back-propagation through time with the hidden state
  carried across chunks (for the teacher too); every time step counts as one sample of the objective.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from banray.data import dataset_kind, load_corpus, load_splits
from banray.evaluate import Scores, calibration_error, expected_calibration_error
from banray.losses import LossParams, Objective
from banray.spec import DataSpec, TrainSpec

EVAL_BATCH_SIZE = 512
LM_EVAL_BATCH_SIZE = 10  # the usual PTB evaluation batch (Zaremba et al.)

Step = Callable[[torch.Tensor], None]  # back-propagates a loss and updates the student


class Task(Protocol):
    num_classes: int
    input_shape: tuple[int, ...]
    split_hash: str  # which samples train and which validate (banray.data.split_hash)

    def train_epoch(
        self, model, teacher, objective: Objective, loss_params: LossParams, step: Step, device, epoch: int
    ) -> dict[str, float]:
        """One epoch (numbered from 1); returns each loss term's mean over the epoch's samples. The epoch's
        sample order depends only on the seed and the epoch, so a resumed run sees the same batches."""

    def score(self, model: nn.Module, split: str, device) -> Scores: ...

    def predict(self, model: nn.Module, split: str, device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(probabilities, labels) of a split, for ensembles; None where ensembles are not defined."""

    def input_example(self) -> np.ndarray | None: ...


def make_task(
    data: DataSpec, train: TrainSpec, *, seed: int = 0, rank: int = 0, world_size: int = 1, prepare_loader=None
) -> Task:
    """The task of `data.dataset`. `prepare_loader` (Ray Train's, in workers) shards the training loader."""
    if dataset_kind(data.dataset) == "language_model":
        return LanguageModelTask(data, train, rank=rank, world_size=world_size)
    return ClassificationTask(data, train, seed=seed, rank=rank, world_size=world_size, prepare_loader=prepare_loader)


def bf16_autocast(train: TrainSpec, device) -> bool:
    """Whether the student's forward pass runs under bf16 autocast ('auto': on CUDA only)."""
    return train.precision == "bf16" or (train.precision == "auto" and torch.device(device).type == "cuda")


def use_channels_last(train: TrainSpec, device) -> bool:
    return train.channels_last == "on" or (train.channels_last == "auto" and torch.device(device).type == "cuda")


def _autocast(train: TrainSpec, device):
    if not bf16_autocast(train, device):
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


class _TermMeans:
    """Each step's terms are kept on the device and read back once, at the epoch's end: a per-step
    .item() would wait for the accelerator every step, and even summing as we go costs a kernel per step."""

    def __init__(self):
        self.values: dict[str, list[torch.Tensor]] = {}
        self.samples: list[int] = []

    def add(self, terms: dict[str, torch.Tensor], samples: int) -> torch.Tensor:
        for name, value in terms.items():
            self.values.setdefault(name, []).append(value.detach())
        self.samples.append(samples)
        values = iter(terms.values())
        loss = next(values)
        for value in values:  # not sum(): that adds a 0 + loss kernel for the common single term
            loss = loss + value
        return loss

    def means(self) -> dict[str, float]:
        weights = torch.tensor(self.samples, dtype=torch.float64)
        total = weights.sum()
        return {
            name: (torch.stack(values).double().cpu() * weights).sum().item() / total.item()
            for name, values in self.values.items()
        }


class _Indexed(Dataset):
    """(input, label, index) triples: the index finds a sample's cached teacher logits."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        x, y = self.base[index]
        return x, y, index

    def __getitems__(self, indices: list[int]):
        # The DataLoader fetches a whole batch through this when it exists: no Python call per sample here.
        getitems = getattr(self.base, "__getitems__", None)
        samples = getitems(indices) if getitems else [self.base[i] for i in indices]
        return [(x, y, i) for (x, y), i in zip(samples, indices)]


def shuffle_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's sample order: distinct for every (trial seed, epoch) a sweep uses."""
    return seed * 100_003 + epoch


def distributed_sampler(dataset: Dataset, seed: int, rank: int, world_size: int) -> DistributedSampler:
    """Rank `rank`'s shard of the training set. DistributedSampler orders by `seed + epoch` after
    set_epoch, so seed * 100_003 gives the single-worker seeds (`shuffle_seed`)."""
    return DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=shuffle_seed(seed, 0)
    )


class ClassificationTask:
    def __init__(
        self, data: DataSpec, train: TrainSpec, *, seed: int, world_size: int, prepare_loader, rank: int = 0
    ):
        self.splits = load_splits(data.dataset, data.root, data.val_fraction, data.seed, data.download)
        self.num_classes, self.input_shape = self.splits.num_classes, self.splits.input_shape
        self.split_hash = self.splits.split_hash
        self._train_loader = None
        self._shuffle = torch.Generator()
        self._sampler: DistributedSampler | None = None
        self._seed = seed
        self._rank, self._world_size = rank, world_size
        self._train = train
        self._data = data
        self._loader_args = (max(1, train.batch_size // world_size), prepare_loader)

    def loader_options(self, device) -> dict:
        """DataLoader workers and pinned memory, resolved for `device` ('auto': workers only to augment
        on a GPU machine, where the CPU is otherwise idle; in-memory tensors need none)."""
        cuda = torch.device(device).type == "cuda"
        workers = self._data.loader_workers
        if workers == "auto":
            augmented = self.splits.augmentation != "none"
            workers = min(4, os.cpu_count() or 1) if cuda and augmented else 0
        pin = self._data.pin_memory == "on" or (self._data.pin_memory == "auto" and cuda)
        return {"num_workers": workers, "pin_memory": pin}

    def _loader(self, epoch: int, device="cpu") -> DataLoader:
        if self._train_loader is None:
            self._train_loader = self._build_loader(device)
        self.splits.set_epoch(epoch)  # before iterating: DataLoader workers get the dataset as it is then
        self._shuffle.manual_seed(shuffle_seed(self._seed, epoch))
        if self._sampler is not None:
            self._sampler.set_epoch(epoch)
        return self._train_loader

    def _build_loader(self, device) -> DataLoader:
        batch_size, prepare = self._loader_args
        dataset = _Indexed(self.splits.train)
        if self._world_size > 1:
            # Our own shards, seeded by the trial: Ray's prepare_data_loader would put in a
            # DistributedSampler seeded 0, the same order for every trial (it keeps one that is there).
            self._sampler = distributed_sampler(dataset, self._seed, self._rank, self._world_size)
            loader = DataLoader(
                dataset, batch_size=batch_size, sampler=self._sampler, generator=self._shuffle,
                **self.loader_options(device),
            )
        else:
            loader = DataLoader(
                dataset, batch_size=batch_size, shuffle=True, generator=self._shuffle, **self.loader_options(device)
            )
        return prepare(loader) if prepare else loader

    def train_epoch(self, model, teacher, objective, loss_params, step, device, epoch) -> dict[str, float]:
        """`teacher` is a banray.teacher.Teacher (online or cached), or None."""
        terms = _TermMeans()
        model.train()
        if teacher is not None:
            teacher.start_epoch(epoch)
        channels_last = use_channels_last(self._train, device)
        for x, y, index in self._loader(epoch, device):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            teacher_logits = teacher.logits(x, index) if teacher is not None else None
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(self._train, device):
                student_logits = model(x)
            step(terms.add(objective.terms(student_logits.float(), teacher_logits, y, loss_params), len(y)))
        return terms.means()

    def _dataset(self, split: str):
        return {"val": self.splits.val, "test": self.splits.test}[split]

    @torch.inference_mode()
    def _logits(self, model: nn.Module, split: str, device) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = model.training
        model.eval()
        logits, labels = [], []
        for x, y in DataLoader(self._dataset(split), batch_size=EVAL_BATCH_SIZE):
            logits.append(model(x.to(device, non_blocking=True)).float().cpu())
            labels.append(y)
        model.train(was_training)
        return torch.cat(logits), torch.cat(labels)

    def score(self, model, split, device="cpu") -> Scores:
        logits, labels = self._logits(model, split, torch.device(device))
        return Scores(
            nll=F.cross_entropy(logits, labels).item(),
            error=(logits.argmax(1) != labels).float().mean().item(),
            ece=expected_calibration_error(F.softmax(logits, dim=1), labels),
        )

    def predict(self, model, split, device="cpu"):
        logits, labels = self._logits(model, split, torch.device(device))
        return F.softmax(logits, dim=1), labels

    def input_example(self) -> np.ndarray:
        return self.splits.test[0][0].unsqueeze(0).numpy()


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """A token stream → (steps, batch) columns, each column a contiguous stretch of the stream."""
    steps = len(ids) // batch_size
    return ids[: steps * batch_size].view(batch_size, steps).t().contiguous()


def bptt_chunks(columns: torch.Tensor, bptt: int):
    """(inputs, next-token targets) chunks of at most `bptt` time steps."""
    for start in range(0, columns.size(0) - 1, bptt):
        length = min(bptt, columns.size(0) - 1 - start)
        yield columns[start : start + length], columns[start + 1 : start + 1 + length]


def _detach(state):
    return None if state is None else tuple(s.detach() for s in state)


class LanguageModelTask:
    def __init__(self, data: DataSpec, train: TrainSpec, *, rank: int, world_size: int):
        self.corpus = load_corpus(data.dataset, data.root, data.download)
        self.num_classes = self.corpus.num_classes
        self.split_hash = self.corpus.split_hash
        self.bptt = train.bptt
        self._train = train
        self.input_shape = (train.bptt,)
        # Each rank trains on its own share of the batch's columns.
        columns = batchify(self.corpus.train, train.batch_size)
        share = max(1, train.batch_size // world_size)
        self.train_columns = columns[:, rank * share : (rank + 1) * share]

    def train_epoch(self, model, teacher, objective, loss_params, step, device, epoch) -> dict[str, float]:
        terms = _TermMeans()  # the column order is fixed, so the epoch changes nothing here
        model.train()
        state = teacher_state = None
        for x, y in bptt_chunks(self.train_columns, self.bptt):
            x, y = x.to(device), y.to(device).reshape(-1)
            state = _detach(state)  # truncated BPTT: no gradient into the previous chunk
            with _autocast(self._train, device):
                logits, state = model(x, state)
            logits = logits.float()
            teacher_logits = None
            if teacher is not None:
                teacher_logits, teacher_state = teacher.logits_with_state(x, teacher_state)
                teacher_logits = teacher_logits.reshape(-1, self.num_classes)
            student_logits = logits.reshape(-1, self.num_classes)
            step(terms.add(objective.terms(student_logits, teacher_logits, y, loss_params), len(y)))
        return terms.means()

    @torch.inference_mode()
    def score(self, model, split, device="cpu") -> Scores:
        ids = {"val": self.corpus.valid, "test": self.corpus.test}[split]
        columns = batchify(ids, LM_EVAL_BATCH_SIZE)
        was_training = model.training
        model.eval()
        nll, wrong, tokens, state = 0.0, 0, 0, None
        confidences, hits = [], []  # per token, for the ECE; the full probabilities would not fit
        for x, y in bptt_chunks(columns, self.bptt):
            logits, state = model(x.to(device), state)
            logits, y = logits.reshape(-1, self.num_classes).float().cpu(), y.reshape(-1)
            log_probs = F.log_softmax(logits, dim=1)
            nll += F.nll_loss(log_probs, y, reduction="sum").item()
            top, predicted = log_probs.max(1)
            wrong += (predicted != y).sum().item()
            tokens += len(y)
            confidences.append(top.exp())
            hits.append(predicted == y)
        model.train(was_training)
        return Scores(
            nll=nll / tokens, error=wrong / tokens, ece=calibration_error(torch.cat(confidences), torch.cat(hits))
        )

    def predict(self, model, split, device="cpu"):
        return None  # ensembles of language models are not computed (per-token vocabularies are large)

    def input_example(self) -> None:
        return None  # the model takes (tokens, state) and returns a tuple: no MLflow signature
