"""A teacher-logit cache shared by every trial of a generation (`distill.teacher: cached`).

All trials of a generation distil from the same frozen teacher and, since each (sample, epoch)'s
augmentation is drawn from (data seed, epoch, sample index) only (banray.catalog.data.Splits.train_views), they all
show it the same views: the teacher's logits for a view can be computed once and looked up by every
trial. The cache is then exact, not an approximation — a "consistent teacher" (Beyer et al. 2022) —
up to its storage dtype: float32 is bit-exact, float16 (the default, half the bytes) rounds each
logit to 11 significant bits. Raw logits are stored, so the temperature stays searchable. With
`top_k`, only each view's k largest logits (and their classes) are stored; the others are read back
as far below the k-th (TAIL_GAP), so at any temperature the teacher's softmax is renormalised over
its top k: a smaller cache, no longer exact.

Layout: `<root>/<key>/epoch-<e>.pt` holds the (train samples, classes) logits of epoch e in the
training split's sample order — or a single `epoch-all.pt` when the dataset has no augmentation, since
every epoch then shows the same inputs. The key (CacheKey) hashes what the logits depend on: the teacher
(arch, kwargs, code revision, weights; for an ensemble teacher, those of every member in order), the views
(dataset, split hash, augmentation policy and the seed its draws come from) and how they are stored (dtype,
top_k), so a cache is never read for another split, model code, member or view. `root` is the sweep's storage (local or s3://) or node-local disk.

The trials build the cache themselves, on their own devices, one epoch's file at a time as they need
it: a trial that finds the file of its next epoch missing claims the first missing file nobody is
building (its own epoch, or a later one while others build the earlier ones) and builds it. Trials
of a group that train side by side thus split the teacher's passes between them. Files are written
whole (banray.files.CacheFolder, local or object storage), so a reader never sees half a file. Claims are files too: exclusive on local disk; on
object storage two builders may race for one, and then write identical files (the build is
deterministic). A claim whose builder died (e.g. a trial stopped by ASHA) is taken over once stale.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from banray.catalog.data import Splits
from banray.files import LOCAL, Storage
from banray.training.checkpoint import ModelIdentity
from banray.training.teacher import Ensemble, Frozen

DTYPES = {"float16": torch.float16, "float32": torch.float32}
BUILD_BATCH_SIZE = 128  # larger batches run slower on CPU (activations fall out of cache)
DEFAULT_ROOT = "~/.cache/banray/teacher-logits"  # node-local, when the sweep gives no shared place
# How far below a view's k-th largest logit its unstored logits are put back: their softmax weight is at
# most e^(-TAIL_GAP / T) (below e^-100 up to T = 100), and finite values keep every loss free of inf − inf.
TAIL_GAP = 1e4


def weights_digest(model: nn.Module) -> str:
    """sha256 of a model's state dict (names, dtypes, shapes and bytes), independent of where it was saved."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class TeacherKey(BaseModel):
    """What one model's logits depend on."""

    model_config = ConfigDict(frozen=True)

    arch: str
    kwargs: dict[str, Any]
    revision: int  # of the arch's code: the function the weights compute
    weights: str  # weights_digest of the model


class CacheKey(BaseModel):
    """Everything a cache's logits depend on; its hash names the cache's folder."""

    model_config = ConfigDict(frozen=True)

    teachers: list[TeacherKey]  # the teacher, or an ensemble teacher's members in their order
    dataset: str
    split_hash: str  # which samples are the training split, in which order
    augmentation: str
    augmentation_seed: int | None  # with the epoch and the sample index, it draws each view
    dtype: str
    top_k: int | None

    def folder(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:24]


def cache_key(teacher: nn.Module, identity: ModelIdentity | list[ModelIdentity], splits: Splits, dtype: str,
              top_k: int | None = None) -> CacheKey:
    """The key of the cache of `teacher` (the model `identity` describes, or an Ensemble whose members the list
    `identity` describes in their order) on the training views of `splits`."""
    members = list(teacher.members) if isinstance(teacher, Ensemble) else [teacher]
    identities = identity if isinstance(identity, list) else [identity]
    return CacheKey(
        teachers=[TeacherKey(arch=i.arch, kwargs=i.kwargs, revision=i.revision, weights=weights_digest(member))
                  for member, i in zip(members, identities, strict=True)],
        dataset=splits.dataset, split_hash=splits.split_hash, augmentation=splits.augmentation,
        augmentation_seed=splits.augmentation_seed, dtype=dtype, top_k=top_k,
    )


def _epoch_file(epoch: int | None) -> str:
    return "epoch-all.pt" if epoch is None else f"epoch-{epoch:04d}.pt"


def _epochs(splits: Splits, epochs: int) -> list[int | None]:
    return [None] if splits.augmentation == "none" else list(range(1, epochs + 1))


@torch.inference_mode()
def _teacher_logits(teacher: nn.Module, splits: Splits, epoch: int | None, dtype: torch.dtype, device) -> torch.Tensor:
    placed = splits.on(device)
    positions = torch.arange(len(placed.train), device=device)
    chunks = [teacher(placed.train_views(batch, epoch)).to("cpu", dtype) for batch in positions.split(BUILD_BATCH_SIZE)]
    return torch.cat(chunks)


class CachedTeacher:
    """A trial's view of the cache of `teacher`'s logits (the model `identity` describes, or an Ensemble and its
    members' identities) on the training split of `splits` under `root`: the logits of one epoch by
    training-sample index, built first if no trial built them yet; a banray.training.teacher.Teacher. `teacher` is
    held frozen (banray.training.teacher.Frozen)."""

    POLL_S = 0.2  # how often a trial waiting for another's build looks for the file
    MIN_STALE_S = 120.0  # a claim is taken over after max(this, 3 × this trial's slowest build)

    def __init__(self, teacher: nn.Module, identity: ModelIdentity | list[ModelIdentity], splits: Splits, root: str,
                 epochs: int, dtype: str = "float16", device="cpu", top_k: int | None = None,
                 storage: Storage = LOCAL):
        self.model = teacher if isinstance(teacher, Frozen) else Frozen(teacher)
        self.teacher = self.model.module
        self.splits, self.device, self.dtype = splits, device, DTYPES[dtype]
        self.top_k = top_k
        self.folder = storage.cache_folder(root, cache_key(self.teacher, identity, splits, dtype, top_k).folder())
        self.uri = self.folder.uri
        self._present: set[str] = set()  # files seen written: they never change or go away
        self.epochs = _epochs(splits, epochs)
        self.built: list[int | None] = []  # the epochs this trial built, in order
        self._slowest_build_s = 0.0
        self._epoch, self._table = None, None
        self._placed: torch.Tensor | None = None  # the epoch's table on the training device

    def start_epoch(self, epoch: int) -> None:
        self.for_epoch(epoch)

    def logits(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if self._placed is None or self._placed.device != x.device:
            self._placed = self._table.to(x.device)  # once per epoch: `index` is on the training device
        return self._placed[index].float()

    def for_epoch(self, epoch: int) -> torch.Tensor:
        """(train samples, classes) logits as stored; loaded once per epoch (once in all without augmentation)."""
        key = epoch if self.epochs != [None] else None
        if self._table is None or key != self._epoch:
            self._table, self._placed = self._fetch(key), None
            self._epoch = key
        return self._table

    def _written(self, name: str) -> bool:
        if name not in self._present and self.folder.exists(name):
            self._present.add(name)
        return name in self._present

    def _fetch(self, epoch: int | None) -> torch.Tensor:
        name = _epoch_file(epoch)
        while not self._written(name):
            if not self._build_one(self.epochs[self.epochs.index(epoch):]):
                time.sleep(self.POLL_S)  # every missing file from here on is being built by another trial
        stored = torch.load(io.BytesIO(self.folder.read_bytes(name)), map_location="cpu", weights_only=True)
        if isinstance(stored, torch.Tensor):
            return stored
        values = stored["values"].float()
        tail = values.min(dim=1, keepdim=True).values - TAIL_GAP
        table = tail.expand(len(values), stored["classes"]).clone()
        return table.scatter_(1, stored["indices"].long(), values)

    def _stored(self, logits: torch.Tensor):
        """What a file holds: the logits as they are, or (top_k) the k largest with their classes."""
        if self.top_k is None:
            return logits
        values, indices = logits.float().topk(self.top_k, dim=1)
        index_dtype = torch.int16 if logits.shape[1] <= torch.iinfo(torch.int16).max else torch.int32
        return {"values": values.to(self.dtype), "indices": indices.to(index_dtype), "classes": logits.shape[1]}

    def _build_one(self, candidates: list[int | None]) -> bool:
        """Build the first of `candidates` that is neither written nor claimed; whether there was one."""
        stale_after_s = max(self.MIN_STALE_S, 3 * self._slowest_build_s)
        for epoch in candidates:
            name = _epoch_file(epoch)
            if self._written(name) or not self.folder.claim(name, stale_after_s):
                continue
            if self._written(name):  # written and released between the look and the claim
                self.folder.release(name)
                continue
            started = time.monotonic()
            buffer = io.BytesIO()
            logits = _teacher_logits(self.teacher, self.splits, epoch, torch.float32 if self.top_k else self.dtype,
                                     self.device)
            torch.save(self._stored(logits), buffer)
            self.folder.write_bytes(name, buffer.getvalue())
            self.folder.release(name)
            self._slowest_build_s = max(self._slowest_build_s, time.monotonic() - started)
            self.built.append(epoch)
            return True
        return False
