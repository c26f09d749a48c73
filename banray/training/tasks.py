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
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from banray.catalog.data import dataset_kind, load_corpus, load_splits
from banray.catalog.losses import LossParams, Objective
from banray.catalog.scores import Scores, calibration_error, expected_calibration_error
from banray.spec import DataSpec, TrainSpec

EVAL_BATCH_SIZE = 512
LM_EVAL_BATCH_SIZE = 10  # the usual PTB evaluation batch (Zaremba et al.)

Step = Callable[[torch.Tensor], None]  # back-propagates a loss and updates the student


class Task(Protocol):
    num_classes: int
    input_shape: tuple[int, ...]
    split_hash: str  # which samples train and which validate (banray.catalog.data.split_hash)
    train_samples: int  # the samples this rank trains on per epoch (for time steps of a language model, each)

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
    data: DataSpec, train: TrainSpec, *, seed: int = 0, rank: int = 0, world_size: int = 1
) -> Task:
    """The task of `data.dataset`. Rank `rank` of `world_size` data-parallel workers trains on its shard of each
    epoch's order."""
    if dataset_kind(data.dataset) == "language_model":
        return LanguageModelTask(data, train, rank=rank, world_size=world_size)
    return ClassificationTask(data, train, seed=seed, rank=rank, world_size=world_size)


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


def shuffle_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's sample order: distinct for every (trial seed, epoch) a sweep uses."""
    return seed * 100_003 + epoch


def epoch_order(seed: int, epoch: int, size: int) -> torch.Tensor:
    """The training split's positions in the order of `epoch`: drawn on the CPU from shuffle_seed(seed, epoch)
    alone, so a resumed run and every device see the same order (DistributedSampler's permutation)."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(shuffle_seed(seed, epoch)))


def rank_shard(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank `rank`'s share of an epoch's order as DistributedSampler deals it: the order, continued from its start
    up to a multiple of world_size, then every world_size-th position from `rank`."""
    total = -(-len(order) // world_size) * world_size
    return order.repeat(-(-total // len(order)))[:total][rank::world_size]


def compute_dtype(train: TrainSpec, device) -> torch.dtype:
    """The dtype the student's forward pass runs in: its inputs are made in it."""
    return torch.bfloat16 if bf16_autocast(train, device) else torch.float32


class ClassificationTask:
    def __init__(self, data: DataSpec, train: TrainSpec, *, seed: int, world_size: int, rank: int = 0):
        self.splits = load_splits(data.dataset, data.root, data.val_fraction, data.seed, data.download)
        self.num_classes, self.input_shape = self.splits.num_classes, self.splits.input_shape
        self.split_hash = self.splits.split_hash
        self._seed = seed
        self._rank, self._world_size = rank, world_size
        self._train = train
        self._batch_size = max(1, train.batch_size // world_size)
        self.train_samples = -(-len(self.splits.train) // world_size)  # rank_shard's length

    def batches(self, epoch: int, device) -> tuple[torch.Tensor, ...]:
        """This rank's batches of `epoch`: positions in the training split, on `device`."""
        order = rank_shard(epoch_order(self._seed, epoch, len(self.splits.train)), self._rank, self._world_size)
        return order.to(device).split(self._batch_size)

    def _layout(self, device) -> torch.memory_format:
        images = len(self.input_shape) == 3
        return torch.channels_last if images and use_channels_last(self._train, device) else torch.contiguous_format

    def train_epoch(self, model, teacher, objective, loss_params, step, device, epoch) -> dict[str, float]:
        """`teacher` is a banray.training.teacher.Teacher (online or cached), or None."""
        terms = _TermMeans()
        model.train()
        if teacher is not None:
            teacher.start_epoch(epoch)
        splits = self.splits.on(device)
        dtype, layout = compute_dtype(self._train, device), self._layout(device)
        # A teacher sees the float32 view, as the cache's builder does; the student the same view rounded once.
        view_dtype = torch.float32 if teacher is not None else dtype
        for positions in self.batches(epoch, device):
            view = splits.train_views(positions, epoch, view_dtype)
            teacher_logits = teacher.logits(view, positions) if teacher is not None else None
            x = view.to(dtype=dtype, memory_format=layout)
            with _autocast(self._train, device):
                student_logits = model(x)
            y = splits.train.labels[positions]
            step(terms.add(objective.terms(student_logits.float(), teacher_logits, y, loss_params), len(y)))
        return terms.means()

    @torch.inference_mode()
    def _logits(self, model: nn.Module, split: str, device) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = model.training
        model.eval()
        splits = self.splits.on(device)
        samples = {"val": splits.val, "test": splits.test}[split]
        logits = [model(splits.inputs(samples, slice(start, start + EVAL_BATCH_SIZE))).float()
                  for start in range(0, len(samples), EVAL_BATCH_SIZE)]
        model.train(was_training)
        return torch.cat(logits).cpu(), samples.labels.cpu()

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
        return self.splits.inputs(self.splits.test, slice(0, 1)).numpy()


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
        self.train_samples = (len(self.train_columns) - 1) * self.train_columns.shape[1]  # predicted tokens

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
