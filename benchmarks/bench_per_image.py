"""What batch-invariant per-image execution costs on a CPU: one batch forward vs the same images one by one.

    python benchmarks/bench_per_image.py [--backbone resnet18] [--size 300] [--batch 8] [--threads 2] [--rounds 5]

Assumptions: random weights (seed 0) and random uint8 images: the cost of the
network and post-processing does not depend on the weights' values. The two
ways alternate in one process with the same backend object, and the medians
of ``--rounds`` rounds are quoted, because the machines here are shared.
Prints one JSON object: ms per image for each way and their ratio.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.run.backend import build_backend  # noqa: E402
from harness.settings.config import load_config  # noqa: E402
from harness.sut.per_image import GuardedBackend  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet18", choices=("resnet18", "resnet34"))
    p.add_argument("--size", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = p.parse_args()
    config = load_config(None, {"model": {"backbone": args.backbone, "image_size": [args.size, args.size],
                                          "precision": args.precision, "random_weights": True},
                                "run": {"device": "cpu", "threads": args.threads}})
    inner = build_backend(config, per_image=False)
    ways = {"batched": inner, "per_image": GuardedBackend(inner, per_image=True)}
    torch.manual_seed(0)
    images = {args.size: torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8)}
    hw = torch.tensor([[480, 640]] * args.batch)
    for backend in ways.values():
        backend.predict(images, hw)                       # warm-up of this batch shape
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(args.rounds):
        for name, backend in ways.items():
            t0 = time.perf_counter()
            backend.predict(images, hw)
            times[name].append((time.perf_counter() - t0) * 1e3 / args.batch)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"backbone": args.backbone, "size": args.size, "batch": args.batch, "threads": args.threads,
                      "precision": args.precision, "rounds": args.rounds, "cpu": platform.processor() or platform.machine(),
                      "ms_per_image": {k: round(v, 1) for k, v in med.items()},
                      "per_image_over_batched": round(med["per_image"] / med["batched"], 3)}))


if __name__ == "__main__":
    main()
