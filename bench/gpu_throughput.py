"""(d) On a GPU: images/s of DenseNet-BC-100-12 and WRN-28-10 on CIFAR-shaped data, eager fp32 against banray's
fast path, and the worker loop's ratio to a plain loop there.

Per model, three paired measurements with bench.worker_loop's `measure` (banray's worker-loop epoch and a
plain hand-written loop alternate, repeated; medians), all at the paper's batch of 64:
- loop: banray's epoch with the fast path off (fp32, default memory layout) ÷ the plain eager fp32 loop —
  what the worker loop itself costs on a GPU (the CPU target is ≥ 0.97);
- fast path: banray's epoch with the spec's defaults on CUDA (bf16 autocast, channels-last, pinned memory,
  DataLoader workers) ÷ the plain eager fp32 loop;
- fast path + torch.compile (`train.compile: true`) ÷ the plain eager fp32 loop (the first, compiling epoch
  is the warm-up and is not timed).
Both loops load the same workers and pinning. The data are generated files in CIFAR-10's on-disk format
(tests/fakedata.py) with the standard crop and flip; image content does not change a step's cost.

Run: .venv/bin/python -m bench.gpu_throughput   (needs CUDA; about 10 minutes on one H100)
     .venv/bin/python -m bench.gpu_throughput --smoke   (tiny models on CPU, to check the script; writes nothing)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from banray.spec import DataSpec, TrainSpec
from bench.common import write
from bench.worker_loop import fakedata, measure

MODELS = {"densenet_bc-100-12": ("densenet_bc", {"depth": 100, "growth_rate": 12}),
          "wrn-28-10": ("wrn", {"depth": 28, "widen_factor": 10})}
SMOKE_MODELS = {"densenet_bc-10-4": ("densenet_bc", {"depth": 10, "growth_rate": 4}),
                "wrn-10-1": ("wrn", {"depth": 10, "widen_factor": 1})}
VARIANTS = {
    "loop": {"precision": "fp32", "channels_last": "off"},
    "fast_path": {},  # the spec's defaults: 'auto' is the fast path on CUDA
    "fast_path_compiled": {"compile": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=10_000, help="training images generated (CIFAR-10 format)")
    parser.add_argument("--smoke", action="store_true", help="tiny models on CPU, one repeat; prints, writes nothing")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: this bench measures a GPU (use --smoke to check the script on CPU)")
    device = torch.device("cpu" if args.smoke else "cuda")
    models, repeats, images = (SMOKE_MODELS, 1, 640) if args.smoke else (MODELS, args.repeats, args.images)
    results = []
    with tempfile.TemporaryDirectory() as root:
        fakedata.write_cifar10(Path(root), per_batch=images // 5, test=100)
        data = DataSpec(dataset="cifar10", root=root)
        for name, (arch, kwargs) in models.items():
            case = {"name": name, "data": data, "arch": arch, "kwargs": kwargs, "epochs": 1}
            row = {"model": name}
            for variant, switches in VARIANTS.items():
                train = TrainSpec(epochs=100, batch_size=args.batch_size, lr=0.05, **switches)
                measured = measure(case, repeats, device, train)
                row[f"{variant}_images_per_s"] = measured["banray_steps_per_s"] * args.batch_size
                row[f"{variant}_ratio_to_eager_fp32"] = measured["ratio"]
                row.setdefault("eager_fp32_images_per_s", measured["plain_steps_per_s"] * args.batch_size)
            results.append(row)
            print(json.dumps(row), flush=True)
    if args.smoke:
        return
    write("gpu_throughput", {
        "what": "images/s at batch 64 on CIFAR-shaped data with crop+flip: a plain eager fp32 loop, banray's worker "
                "loop without the fast path (loop), with it (fast_path: bf16 autocast, channels-last, pinned "
                "memory, loader workers) and with torch.compile; ratios are to the plain loop, medians of "
                "paired repeats",
        "batch_size": args.batch_size,
        "training_images": images,
        "results": results,
    })


if __name__ == "__main__":
    main()
