"""The device check: banray's training core on one GPU, measured on CIFAR-shaped generated data (CIFAR-10's
on-disk format, tests/fakedata.py). It needs PyTorch and torchvision, pydantic (carried as wheels) and pyyaml,
and none of Ray, MLflow, Optuna or a network: it runs the core (banray.training, banray.training.tasks) directly.

(a) images/s of a training epoch of WRN-16-4, WRN-28-10 and DenseNet-BC-100-12 at batch 64 and 128: the plain
    baseline a user would write (torchvision dataset and transforms, a DataLoader with 4 workers, eager fp32)
    against banray's core (views made on the device, bf16 autocast, channels-last, fused SGD, cuDNN autotuning);
(b) GPU busy % during those timed epochs (NVML through pynvml, else nvidia-smi);
(c) the share of banray's epoch spent making the views;
(d) a teacher and two BAN generations through the core's trial (what `banray trial --device cuda` runs): the
    loss falls, the best checkpoint reloads with the validation error it was saved with, and a cached teacher
    gives the online teacher's loss;
(e) 1, 2 and 4 trial processes sharing the GPU: aggregate images/s of a small and a large model.

Each side's first epoch is a warm-up (allocator, cuDNN autotuning, the loader's workers); the second is timed.

Run on the GPU machine (the wheels: pydantic, pydantic_core, annotated_types, typing_inspection; README says how):
    python3 -m bench.gpu_check --out bench/results/gpu_check.json      (about 5 minutes on one H100)
    python -m bench.gpu_check --smoke --out /tmp/gpu_check.json          (tiny models on CPU: checks the script)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms as T

from banray.catalog.losses import get_objective
from banray.catalog.models import build_model
from banray.spec import DataSpec, DistillSpec, TrainSpec, parse_spec
from banray.training import checkpoint
from banray.training.local import run_trial, trial_folder, trial_settings
from banray.training.loop import fast_path_student, make_optimizer
from banray.training.tasks import compute_dtype, make_task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import fakedata  # noqa: E402

fakedata.allow_unverified_cifar()

MODELS = {"wrn-16-4": ("wrn", {"depth": 16, "widen_factor": 4}),
          "wrn-28-10": ("wrn", {"depth": 28, "widen_factor": 10}),
          "densenet-bc-100-12": ("densenet_bc", {"depth": 100, "growth_rate": 12})}
SMOKE_MODELS = {"wrn-10-1": ("wrn", {"depth": 10, "widen_factor": 1}),
                "densenet-bc-10-4": ("densenet_bc", {"depth": 10, "growth_rate": 4})}
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
# Issue 32's targets: banray's core ÷ the plain baseline per model, GPU busy in WRN-28-10 epochs, views' share.
TARGETS = {"speedup": {"wrn-16-4": 2.0, "wrn-28-10": 1.5, "densenet-bc-100-12": 1.5}, "busy_percent": 90,
           "views_share": 0.05}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BusySampler:
    """The GPU's utilisation (% of time a kernel ran), sampled every 50 ms while in the `with` block."""

    def __init__(self, device: torch.device):
        self.device, self.samples, self._stop = device, [], threading.Event()
        self._read = _utilisation_reader() if device.type == "cuda" else None

    def __enter__(self) -> BusySampler:
        if self._read is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._read is not None:
            self._stop.set()
            self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append(self._read())

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def _utilisation_reader():
    try:
        import pynvml  # nvidia-ml-py, on the GPU machine

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        return lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
    except ImportError:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 f"--id={torch.cuda.current_device()}"]
        return lambda: float(subprocess.run(query, capture_output=True, text=True).stdout.strip() or "nan")


def timed(device: torch.device, run) -> tuple[float, float | None]:
    """(seconds, mean GPU busy %) of `run()`, the device's queue drained before and after."""
    synchronize(device)
    with BusySampler(device) as busy:
        start = time.perf_counter()
        run()
        synchronize(device)
        seconds = time.perf_counter() - start
    return seconds, busy.mean


def plain_epoch_rate(arch: str, kwargs: dict, batch: int, root: str, device: torch.device, workers: int) -> dict:
    """The baseline: torchvision's CIFAR-10 with RandomCrop + RandomHorizontalFlip + ToTensor + Normalize, a
    shuffling DataLoader, the model in eager fp32, plain SGD, cross-entropy."""
    augment = T.Compose([T.RandomCrop(32, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip(),
                         T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    dataset = datasets.CIFAR10(root, train=True, transform=augment)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    torch.backends.cudnn.benchmark = False
    model = build_model(arch, num_classes=10, input_shape=(3, 32, 32), **kwargs).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def epoch():
        model.train()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

    epoch()
    seconds, busy = timed(device, epoch)
    return {"images_per_s": len(dataset) / seconds, "busy_percent": busy}


def core_training(arch: str, kwargs: dict, batch: int, root: str, device: torch.device):
    """(task, its train settings, train one epoch of the student as a trial's loop does) with the core's fast
    path on `device`."""
    train = TrainSpec(epochs=1000, batch_size=batch, lr=0.05)
    task = make_task(DataSpec(dataset="cifar10", root=root), train, seed=0)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    student = build_model(arch, num_classes=task.num_classes, input_shape=task.input_shape, **kwargs).to(device)
    student = fast_path_student(student, train, device, task.input_shape)
    optimizer = make_optimizer(student.parameters(), train, fused=device.type == "cuda")

    def step(loss):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    ce, params = get_objective("ce"), DistillSpec().loss_params()
    return task, train, lambda epoch: task.train_epoch(student, None, ce, params, step, device, epoch)


def core_epoch_rate(arch: str, kwargs: dict, batch: int, root: str, device: torch.device) -> dict:
    """banray's core: the task's epoch as a trial trains it, and the same epoch's views made alone."""
    task, train, train_epoch = core_training(arch, kwargs, batch, root, device)
    train_epoch(1)
    seconds, busy = timed(device, lambda: train_epoch(2))
    splits, dtype = task.splits.on(device), compute_dtype(train, device)
    views_s, _ = timed(device, lambda: [splits.train_views(p, 3, dtype) for p in task.batches(3, device)])
    return {"images_per_s": task.train_samples / seconds, "busy_percent": busy, "views_share": views_s / seconds}


def throughput(models: dict, batches: tuple[int, ...], root: str, device: torch.device, workers: int) -> list[dict]:
    """(a), (b), (c)."""
    rows = []
    for name, (arch, kwargs) in models.items():
        for batch in batches:
            plain = plain_epoch_rate(arch, kwargs, batch, root, device, workers)
            core = core_epoch_rate(arch, kwargs, batch, root, device)
            rows.append({"model": name, "batch": batch, "plain": plain, "banray": core,
                         "speedup": core["images_per_s"] / plain["images_per_s"]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def trial_spec(root: str, arch: str, kwargs: dict, epochs: int) -> dict:
    return {"name": "gpu-check", "data": {"dataset": "cifar10", "root": root, "val_fraction": 0.2},
            "model": {"arch": arch, "kwargs": kwargs}, "train": {"epochs": epochs, "batch_size": 128, "lr": 0.05},
            "distill": {"objective": "ban"},
            "generations": 2, "chains": 1, "control": False, "search": {"trials": 1}}


def generations(root: str, arch: str, kwargs: dict, epochs: int, out: Path, device: torch.device) -> dict:
    """(d) A teacher and two BAN generations, each the next one's teacher; then generation 1 again with its
    teacher's logits cached (float32: exact), whose first epoch must give the online teacher's loss."""
    spec, rows, best, checks = parse_spec(trial_spec(root, arch, kwargs, epochs)), {}, [None], {}
    for generation in range(3):
        settings = trial_settings(spec, 0, generation, 0, best[-1])
        rows[generation] = []
        summary = run_trial(settings, trial_folder(out, settings), device, on_epoch=rows[generation].append)
        model, record = checkpoint.load(summary.checkpoint)
        task = make_task(settings.data, settings.train, seed=settings.seed)
        reloaded = task.score(model.to(device), "val", device).error
        checks[f"generation {generation}"] = {
            "loss_first_to_last": [rows[generation][0]["train_loss"], rows[generation][-1]["train_loss"]],
            "val_error_saved_and_reloaded": [record.val_error, reloaded]}
        best.append(summary.checkpoint)
    settings = trial_settings(spec, 0, 1, 0, best[1])
    cached_teacher = settings.distill.model_copy(update={"teacher": "cached", "cache_dtype": "float32"})
    settings = settings.model_copy(update={"distill": cached_teacher, "teacher_cache": str(out / "teacher-cache")})
    cached = []
    run_trial(settings, out / "cached", device, on_epoch=cached.append)
    checks["generation 1, first epoch loss: online, cached"] = [rows[1][0]["train_loss"], cached[0]["train_loss"]]
    measured = [checks[f"generation {generation}"] for generation in range(3)]
    checks["the loss falls in every generation"] = all(last < first for first, last in
                                                       (m["loss_first_to_last"] for m in measured))
    checks["every best checkpoint reloads with its saved val_error"] = all(
        abs(saved - reloaded) < 1e-6 for saved, reloaded in (m["val_error_saved_and_reloaded"] for m in measured))
    online, cached_loss = checks["generation 1, first epoch loss: online, cached"]
    checks["cached teacher = online teacher"] = abs(online - cached_loss) <= 1e-4 * abs(online)
    return checks


def sharing(models: dict, processes: tuple[int, ...], root: str, seconds: float) -> list[dict]:
    """(e) n processes training the same model side by side on the GPU for `seconds` after a common start."""
    rows = []
    for name, (arch, kwargs) in models.items():
        for count in processes:
            ready = tempfile.mkdtemp(prefix="ready-", dir=root)  # each process marks itself warm here
            command = [sys.executable, "-m", "bench.gpu_check", "--worker",
                       json.dumps([arch, kwargs, root, ready, count, seconds])]
            workers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(count)]
            rates = [json.loads(worker.communicate()[0].strip().splitlines()[-1]) for worker in workers]
            rows.append({"model": name, "processes": count, "aggregate_images_per_s": sum(rates),
                         "per_process": rates})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def worker(arch: str, kwargs: dict, root: str, ready: str, processes: int, seconds: float) -> None:
    """One trial process of (e): warm up, wait until all `processes` are warm, train whole epochs for `seconds`."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task, _, train_epoch = core_training(arch, kwargs, 128, root, device)
    train_epoch(1)
    synchronize(device)
    Path(ready, str(os.getpid())).touch()
    while len(os.listdir(ready)) < processes:
        time.sleep(0.01)
    start, epoch = time.perf_counter(), 1
    while time.perf_counter() - start < seconds:
        epoch += 1
        train_epoch(epoch)
    print(json.dumps(task.train_samples * (epoch - 1) / (time.perf_counter() - start)))


def verdicts(rows: list[dict]) -> dict:
    """Each of issue 32's GPU targets, met or not."""
    busy = [r["banray"]["busy_percent"] for r in rows if r["model"] == "wrn-28-10"]
    return {
        **{f"speedup {r['model']} batch {r['batch']} ≥ {TARGETS['speedup'][r['model']]}":
           r["speedup"] >= TARGETS["speedup"][r["model"]] for r in rows if r["model"] in TARGETS["speedup"]},
        f"GPU busy in WRN-28-10 epochs ≥ {TARGETS['busy_percent']}%":
            bool(busy) and None not in busy and min(busy) >= TARGETS["busy_percent"],
        f"views ≤ {TARGETS['views_share']:.0%} of an epoch": all(r["banray"]["views_share"] <= TARGETS["views_share"]
                                                                for r in rows),
    }


def environment(device: torch.device) -> dict:
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models and data on CPU: checks the script")
    parser.add_argument("--out", help="where the results go (JSON); required")
    parser.add_argument("--images", type=int, default=10_000, help="training images generated (CIFAR-10 format)")
    parser.add_argument("--share-seconds", type=float, default=10.0, help="(e): how long the processes train")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one process of (e)
    args = parser.parse_args()
    if args.worker:
        worker(*json.loads(args.worker))
        return
    if not args.out:
        parser.error("--out: where the results go is required")
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: this check measures a GPU (--smoke checks the script on CPU)")
    device = torch.device("cpu" if args.smoke else "cuda")
    models = SMOKE_MODELS if args.smoke else MODELS
    images, workers = (250, 2) if args.smoke else (args.images, 4)
    small, large = list(models)[0], list(models)[1]
    folder = Path(tempfile.mkdtemp(prefix="banray-gpu-check-"))
    try:
        fakedata.write_cifar10(folder / "data", per_batch=images // 5, test=200)
        root = str(folder / "data")
        rows = throughput(models, (64, 128), root, device, workers)
        result = {
            **environment(device), "smoke": args.smoke, "training_images": images,
            "throughput": rows,
            "generations": generations(root, *models[small], 2 if args.smoke else 3, folder / "trials", device),
            "sharing": sharing({name: models[name] for name in (small, large)}, (1, 2) if args.smoke else (1, 2, 4),
                               root, 1.0 if args.smoke else args.share_seconds),
        }
        result["targets"] = verdicts(rows) if not args.smoke else "not judged: CPU smoke run"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
