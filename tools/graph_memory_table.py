"""The CUDA graph memory a worker needs, per config and batch: the table in docs/cuda.md, printed as Markdown.

Estimates come from backends/pytorch/graph_memory.py (the network's allocations
traced on the meta device, BatchNorm folded, fp16, channels_last); no GPU is
needed. Per config and batch b:

- Offline: graphs for b, the query's remainder (at most b - 1, the worst case
  shown) and 1 (harness/run/backend.py);
- Server: every batch size from 1 to b (a dynamic batch can take any);
- one stream per capture: every size 1..b, each graph captured on its own
  stream, as the backend did before (no memory shared between graphs).

Each GPU runs ``CUDA_WORKERS_PER_GPU`` workers, each with its own graphs.

    .venv/bin/python tools/graph_memory_table.py [--configs configs/ssd300_600.toml configs/ssd700_1400.toml] \
        [--batches 8 16 32]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.pytorch.graph_memory import GIB, estimate, model_passes  # noqa: E402
from backends.pytorch.network import prepare_network  # noqa: E402
from backends.pytorch.precision import choose_precision  # noqa: E402
from backends.pytorch.backend import CUDA_WORKERS_PER_GPU  # noqa: E402
from backends.ssd.model import SSDResNet  # noqa: E402
from harness.settings.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def table(configs: list[str], batches: list[int]) -> list[str]:
    lines = ["| config | batch | Offline | Server | one stream per capture (before) |", "|---|---|---|---|---|"]
    for path in configs:
        m = load_config(path).model
        m = dataclasses.replace(m, precision=choose_precision(m.precision, "cuda").precision)
        with torch.device("meta"):
            model = SSDResNet(m.num_classes, m.backbone, m.variant).eval()
        prepare_network(model, "meta", DTYPES[m.precision], m.channels_last)
        passes = model_passes(model, m, DTYPES[m.precision])
        for b in batches:
            cells = [estimate(passes, sorted({b, max(b - 1, 1), 1})).total,
                     estimate(passes, range(1, b + 1)).total, estimate(passes, range(1, b + 1)).unshared]
            text = " | ".join(f"{c / GIB:.1f} GiB ({CUDA_WORKERS_PER_GPU * c / GIB:.1f})" for c in cells)
            lines.append(f"| {Path(path).name} ({m.image_size[0]} + {m.image_size[1]}, {m.precision}) | {b} | {text} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=[str(ROOT / "configs" / n)
                                                    for n in ("ssd300_600.toml", "ssd700_1400.toml")])
    p.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    args = p.parse_args(argv)
    print(f"Per worker (in brackets: the {CUDA_WORKERS_PER_GPU} workers of one GPU).\n")
    print("\n".join(table(args.configs, args.batches)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
