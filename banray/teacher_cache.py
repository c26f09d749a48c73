"""A teacher-logit cache shared by every trial of a generation (`distill.teacher: cached`).

All trials of a generation distil from the same frozen teacher and, since each (sample, epoch)'s
augmentation is drawn from (data seed, epoch, sample index) only (banray.data.Augmented), they all
show it the same views: the teacher's logits for a view can be computed once and looked up by every
trial. The cache is then exact, not an approximation — a "consistent teacher" (Beyer et al. 2022) —
up to its storage dtype: float32 is bit-exact, float16 (the default, half the bytes) rounds each
logit to 11 significant bits. Raw logits are stored, so the temperature stays searchable.

Layout: `<root>/<key>/epoch-<e>.pt` holds the (train samples, classes) logits of epoch e in the
training split's sample order — or a single `epoch-all.pt` when the dataset has no augmentation, since
every epoch then shows the same inputs — and `complete.json` marks a finished cache. The key hashes the
teacher's weights and architecture, the augmentation policy, the dataset and its split (data seed,
validation fraction) and the dtype. `root` is the sweep's storage (local or s3://) or node-local disk.
Files appear by atomic rename, so a reader never sees half a file; on local disk a file lock makes
concurrent builders wait for the first one, which wins.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import torch
from torch import nn
from torch.utils.data import DataLoader

from banray.data import Splits, load_splits
from banray.spec import DataSpec
from banray.storage import with_retries

DTYPES = {"float16": torch.float16, "float32": torch.float32}
BUILD_BATCH_SIZE = 128  # larger batches run slower on CPU (activations fall out of cache)
COMPLETE_FILE = "complete.json"
DEFAULT_ROOT = "~/.cache/banray/teacher-logits"  # node-local, when the sweep gives no shared place


def weights_digest(model: nn.Module) -> str:
    """sha256 of a model's state dict (names, dtypes, shapes and bytes), independent of where it was saved."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(teacher: nn.Module, data: DataSpec, augmentation: str, dtype: str) -> str:
    identity = {
        "teacher": weights_digest(teacher),
        "teacher_class": type(teacher).__qualname__,
        "augmentation": augmentation,
        "dataset": data.dataset,
        "val_fraction": data.val_fraction,
        "data_seed": data.seed,
        "dtype": dtype,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def _epoch_file(epoch: int | None) -> str:
    return "epoch-all.pt" if epoch is None else f"epoch-{epoch:04d}.pt"


def _epochs(splits: Splits, epochs: int) -> list[int | None]:
    return [None] if splits.augmentation == "none" else list(range(1, epochs + 1))


class _Folder:
    """One cache folder through pyarrow's filesystems (local or S3), every access retried."""

    def __init__(self, uri: str):
        if "://" not in uri:
            uri = str(Path(uri).expanduser().resolve())
        self.uri = uri
        self.fs, self.path = pafs.FileSystem.from_uri(uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def exists(self, name: str) -> bool:
        return with_retries(
            f"checking {self.uri}/{name}",
            lambda: self.fs.get_file_info(f"{self.path}/{name}").type != pafs.FileType.NotFound,
        )

    def read(self, name: str) -> bytes:
        def read() -> bytes:
            with self.fs.open_input_stream(f"{self.path}/{name}") as stream:
                return stream.read()

        return with_retries(f"reading {self.uri}/{name}", read)

    def write(self, name: str, data: bytes) -> None:
        """Write to a temporary name, then rename: readers see the whole file or none."""
        temporary = f"{self.path}/.{name}.{uuid.uuid4().hex}"

        def write() -> None:
            self.fs.create_dir(self.path, recursive=True)
            with self.fs.open_output_stream(temporary) as stream:
                stream.write(data)
            self.fs.move(temporary, f"{self.path}/{name}")

        with_retries(f"writing {self.uri}/{name}", write)

    @contextlib.contextmanager
    def build_lock(self):
        """On local disk, one builder at a time; object storage has no locks, and two builders there write
        identical files (the build is deterministic), so the last rename is as good as the first."""
        if not self.local:
            yield
            return
        Path(self.path).mkdir(parents=True, exist_ok=True)
        with open(Path(self.path) / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


@torch.inference_mode()
def _teacher_logits(teacher: nn.Module, splits: Splits, epoch: int | None, dtype: torch.dtype, device) -> torch.Tensor:
    if epoch is not None:
        splits.set_epoch(epoch)
    chunks = []
    for x, _ in DataLoader(splits.train, batch_size=BUILD_BATCH_SIZE):
        chunks.append(teacher(x.to(device, non_blocking=True)).to("cpu", dtype))
    return torch.cat(chunks)


def ensure(
    teacher: nn.Module, data: DataSpec, epochs: int, root: str, dtype: str = "float16", device="cpu", splits=None
) -> str:
    """The URI of the cache of `teacher`'s logits on `data`'s training split for `epochs` epochs, built
    first if no finished one exists under `root`. `teacher` is frozen (eval mode, no gradients) for good."""
    splits = splits or load_splits(data.dataset, data.root, data.val_fraction, data.seed, data.download)
    teacher.eval().requires_grad_(False)  # frozen: no autograd bookkeeping in its forward passes
    folder = _Folder(f"{root.rstrip('/')}/{cache_key(teacher, data, splits.augmentation, dtype)}")
    needed = _epochs(splits, epochs)
    with folder.build_lock():
        done = json.loads(folder.read(COMPLETE_FILE)) if folder.exists(COMPLETE_FILE) else {"epochs": []}
        if set(needed) <= set(done["epochs"]):
            return folder.uri
        for epoch in needed:
            if epoch not in done["epochs"]:
                buffer = io.BytesIO()
                torch.save(_teacher_logits(teacher, splits, epoch, DTYPES[dtype], device), buffer)
                folder.write(_epoch_file(epoch), buffer.getvalue())
        entry = {"epochs": sorted(set(done["epochs"]) | set(needed), key=lambda e: -1 if e is None else e),
                 "augmentation": splits.augmentation, "samples": len(splits.train), "dtype": dtype}
        folder.write(COMPLETE_FILE, json.dumps(entry).encode())
    return folder.uri


class CachedTeacher:
    """A trial's view of a finished cache: the teacher's logits of one epoch, by training-sample index."""

    def __init__(self, uri: str):
        self.folder = _Folder(uri)
        self.uri = uri
        entry = json.loads(self.folder.read(COMPLETE_FILE))
        self.augmented = entry["augmentation"] != "none"
        self._epoch, self._table = None, None

    def for_epoch(self, epoch: int) -> torch.Tensor:
        """(train samples, classes) logits as stored; loaded once per epoch (once in all without augmentation)."""
        key = epoch if self.augmented else None
        if self._table is None or key != self._epoch:
            data = self.folder.read(_epoch_file(key))
            self._table = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            self._epoch = key
        return self._table


def ensure_for_generation(spec, teacher_checkpoint: str, root: str) -> str | None:
    """What a generation group calls once before its trials start: the cache's URI under `root` (built if
    missing), or None when the spec's students use the online teacher."""
    from banray import checkpoint
    from banray.data import dataset_kind

    if spec.distill.teacher != "cached" or dataset_kind(spec.data.dataset) != "classification":
        return None
    teacher, _ = with_retries(f"loading {teacher_checkpoint}", lambda: checkpoint.load(teacher_checkpoint))
    return ensure(teacher, spec.data, spec.train.epochs, root, spec.distill.cache_dtype)
