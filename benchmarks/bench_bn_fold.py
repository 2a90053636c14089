"""BatchNorm folded into the convolutions against kept as its own layer: network time and agreement, on the CPU.

For each precision (``--precisions``, default fp32 and bf16) the config's
network is prepared twice from the same weights: as the backend runs it
(BatchNorm folded, backends/ssd/fold.py) and as it ran before (BatchNorm its
own layer, kept in fp32 as the backend used to keep it). Both are timed side
by side in one process on the same batch, every pass of the two-scale method
(the network only: normalization and post-processing are the same for both),
alternating for ``--reps`` rounds; medians are quoted. Each way's error is
its largest output difference from the same weights run in fp32 with
BatchNorm its own layer, relative to the largest output value.

    .venv/bin/python benchmarks/bench_bn_fold.py [--config configs/demo.toml] [--batch-size 1] [--reps 7]

Writes benchmarks/results/bn_fold.json and bn_fold.md.
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.pytorch.network import prepare_network  # noqa: E402
from backends.ssd.checkpoint import load_checkpoint  # noqa: E402
from backends.ssd.model import SSDResNet  # noqa: E402
from backends.ssd.two_scale import build_passes  # noqa: E402
from benchmarks import common  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def unfolded_network(model: nn.Module, dtype: torch.dtype, channels_last: bool) -> nn.Module:
    """``model`` cast to ``dtype`` with its BatchNorm layers kept, in fp32, as the backend prepared it before."""
    model.to(dtype)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.float()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def time_passes(network: nn.Module, inputs: list[tuple[torch.Tensor, list[int]]]) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x, mask in inputs:
            network(x, mask)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_flags(p)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    p.add_argument("--reps", type=int, default=7, help="alternating timed rounds per precision")
    p.set_defaults(batch_size=1, device="cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg, note = common.resolve_config(args, Path(tmp) / "out", common.write_conf(Path(tmp) / "c.conf", 1))
    m = cfg.model
    torch.manual_seed(0)
    base = SSDResNet(m.num_classes, m.backbone, m.variant).eval()
    if m.checkpoint:
        load_checkpoint(m.checkpoint, base, trust_pickle=m.trust_pickle)
    base.requires_grad_(False)
    layout = torch.channels_last if m.channels_last else torch.contiguous_format
    g = torch.Generator().manual_seed(0)
    x32 = [(torch.randn(args.batch_size, 3, ps.size, ps.size, generator=g).contiguous(memory_format=layout),
            list(ps.mask)) for ps in build_passes(m)]
    with torch.inference_mode():   # the truth both ways are held against: BatchNorm its own layer, all fp32
        reference = unfolded_network(copy.deepcopy(base), torch.float32, m.channels_last)
        want = [t for x, mask in x32 for t in reference(x, mask)]
    scale = max(float(t.abs().max()) for t in want)
    rows = []
    for precision in args.precisions:
        dtype = DTYPES[precision]
        ways = {"folded": prepare_network(copy.deepcopy(base), "cpu", dtype, m.channels_last),
                "BatchNorm layer": unfolded_network(copy.deepcopy(base), dtype, m.channels_last)}
        inputs = [(x.to(dtype).contiguous(memory_format=layout), mask) for x, mask in x32]
        err = {}
        with torch.inference_mode():
            for k, net in ways.items():
                got = [t.float() for x, mask in inputs for t in net(x, mask)]
                err[k] = max(float((a - b).abs().max()) for a, b in zip(got, want)) / scale
        times = {k: [] for k in ways}
        for _ in range(args.reps):
            for k, net in ways.items():
                times[k].append(common.in_thread(time_passes, net, inputs))
        med = {k: 1e3 * common.median(v) / args.batch_size for k, v in times.items()}
        rows.append({"precision": precision, "folded_ms": med["folded"], "unfolded_ms": med["BatchNorm layer"],
                     "speedup": med["BatchNorm layer"] / med["folded"], "folded_error": err["folded"],
                     "unfolded_error": err["BatchNorm layer"]})
        print(f"  {precision}: folded {med['folded']:.1f} ms, BatchNorm layer {med['BatchNorm layer']:.1f} ms per "
              f"image ({rows[-1]['speedup']:.2f}x); largest difference from fp32 with a BatchNorm layer, relative "
              f"to the output's scale: folded {err['folded']:.1e}, BatchNorm layer {err['BatchNorm layer']:.1e}",
              flush=True)
    doc = {"benchmark": "BatchNorm folded into the convolutions: CPU network time", **common.header(cfg, None, note),
           "batch_size": args.batch_size, "reps": args.reps, "rows": rows}
    doc["model"] = doc["model"].replace(f", {m.precision}", ", " + " and ".join(args.precisions))
    table = [f"Network only (every pass of the two-scale method), batch {args.batch_size}, median of {args.reps} "
             "alternating rounds, ms per image. Error: the largest output difference from the same weights in fp32 "
             "with BatchNorm its own layer, relative to the output's largest value.", "",
             "| precision | BatchNorm layer ms | folded ms | speedup | error, BatchNorm layer | error, folded |",
             "|---|---|---|---|---|---|"]
    table += [f"| {r['precision']} | {r['unfolded_ms']:.1f} | {r['folded_ms']:.1f} | {r['speedup']:.2f}x | "
              f"{r['unfolded_error']:.1e} | {r['folded_error']:.1e} |" for r in rows]
    common.save("bn_fold" + args.suffix, doc, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
