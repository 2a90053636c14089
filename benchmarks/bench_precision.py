"""Precision and layout options against fp32, in one run: speed, detections agreement, mAP.

For each option (CPU: fp32 NCHW, fp32 channels_last, bf16 NCHW, bf16
channels_last and, with ``--compile``, bf16 channels_last compiled; CUDA:
fp32, fp16 NCHW, fp16 channels_last without and with CUDA graphs, bf16; CUDA fp32
is IEEE fp32: the backend turns TF32 off, see backends/pytorch/network.py) the
backend is built from the same config, warmed up, timed on the same
preloaded batch (median ms per sample of ``--reps`` calls of ``predict``), then
run over the whole synthetic demo set (seed 0) to get COCO mAP and the
agreement with the first option's detections: the share of its confident
detections (score >= ``CONFIDENT``) that have a twin of the same label with
IoU >= ``TWIN_IOU`` in the option's output. Goal for bf16: the same top
detections and mAP within 0.5 points of fp32 (meaningful with the trained
checkpoint; random weights detect nothing real).

    .venv/bin/python benchmarks/bench_precision.py [--images 48] [--reps 5] [--compile]

Writes benchmarks/results/precision.json and precision.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

CONFIDENT = 0.5
TWIN_IOU = 0.9
MAP_TOLERANCE_POINTS = 0.5
CPU_OPTIONS = [("fp32 NCHW", "fp32", False, False), ("fp32 channels_last", "fp32", True, False),
               ("bf16 NCHW", "bf16", False, False), ("bf16 channels_last", "bf16", True, False)]
CPU_COMPILED = ("bf16 channels_last compiled", "bf16", True, True)
CUDA_OPTIONS = [("fp32 (IEEE, TF32 off)", "fp32", True, False), ("fp16 NCHW", "fp16", False, False),
                ("fp16 channels_last, no graphs", "fp16", True, False), ("fp16 channels_last", "fp16", True, False),
                ("bf16 channels_last", "bf16", True, False)]


def iou_yxyx(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box a [4] against boxes b [M, 4], both (ymin, xmin, ymax, xmax) as in the response record."""
    lt, rb = np.maximum(a[:2], b[:, :2]), np.minimum(a[2:], b[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    return inter / ((a[2:] - a[:2]).prod() + (b[:, 2:] - b[:, :2]).prod(1) - inter + 1e-12)


def agreement(ref: dict[int, np.ndarray], got: dict[int, np.ndarray]) -> tuple[float, int]:
    """Share of confident reference detections with a same-label twin (IoU >= TWIN_IOU); and their count."""
    hits = total = 0
    for idx, rows in ref.items():
        other = got.get(idx, np.zeros((0, 7), np.float32))
        for row in rows[rows[:, 5] >= CONFIDENT]:
            total += 1
            same = other[other[:, 6] == row[6]]
            hits += bool(same.shape[0]) and bool(iou_yxyx(row[1:5], same[:, 1:5]).max() >= TWIN_IOU)
    return (hits / total if total else float("nan")), total


def time_predict(backend, batch, reps: int) -> float:
    """Median ms per sample of ``predict`` on one batch."""
    images, hw = batch
    times = []
    for _ in range(reps):
        common.sync(backend)
        t = time.perf_counter()
        backend.predict(images, hw)
        common.sync(backend)
        times.append(time.perf_counter() - t)
    return 1e3 * common.median(times) / hw.shape[0]


def main(argv: list[str] | None = None) -> int:
    from backends.pytorch.backend import resolve_device
    from harness.accuracy.evaluate import evaluate_records
    from harness.run.evaluate import predict_all

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_flags(p, images=48)
    p.add_argument("--reps", type=int, default=5, help="timed predict calls per option")
    args = p.parse_args(argv)
    compile_flag, args.compile = bool(args.compile), None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg, note = common.resolve_config(args, tmp / "out", common.write_conf(tmp / "c.conf", 1))
        cuda = resolve_device(cfg.run.device).type == "cuda"
        options = CUDA_OPTIONS if cuda else CPU_OPTIONS + ([CPU_COMPILED] if compile_flag else [])
        ref_records = None
        for name, precision, channels_last, compiled in options:
            model = dataclasses.replace(cfg.model, precision=precision, channels_last=channels_last,
                                        compile=compiled, cuda_graphs=cuda and "no graphs" not in name)
            option_cfg = dataclasses.replace(cfg, model=model)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                t0 = time.perf_counter()
                # every batch shape the timing and the mAP pass use: full, the data set's remainder, 1
                backend = common.build_backend(option_cfg, (1, args.batch_size, args.images % args.batch_size or 1))
                ready_s = time.perf_counter() - t0
            if not rows:
                dataset = common.make_dataset(tmp, args.images, backend.sizes, pin_memory=cuda)
                batch = common.preload_batches(dataset, backend, args.batch_size)[0]
            ms = common.in_thread(time_predict, backend, batch, args.reps)
            records = common.in_thread(predict_all, backend, dataset.qsl, args.batch_size, False)
            report = evaluate_records(records, dataset.annotation_file, expected=range(dataset.total_count))
            if ref_records is None:
                ref_records = records
            agree, confident = agreement(ref_records, records)
            row = {"option": name, "precision": precision, "channels_last": channels_last, "compiled": compiled,
                   "ms_per_sample": ms, "map": report.map, "agreement": agree, "confident_reference": confident,
                   "load_and_warmup_s": ready_s, "compile_s": backend.compile_seconds}
            rows.append(row)
            print(f"  {name:<32} {ms:8.1f} ms/sample  mAP {100 * report.map:6.2f}  agreement {agree:.3f} "
                  f"({confident} confident)" + (f"  compile {backend.compile_seconds:.1f} s" if compiled else ""),
                  flush=True)
            del backend
            if cuda:
                torch.cuda.empty_cache()
    base = rows[0]
    for r in rows:
        r["speedup"] = base["ms_per_sample"] / r["ms_per_sample"]
        r["map_delta_points"] = 100 * (r["map"] - base["map"])
    header = common.header(cfg, None, note)
    doc = {"benchmark": "Precision and layout options against fp32", "goal": f"bf16: same top detections, "
           f"mAP within {MAP_TOLERANCE_POINTS} points of fp32", **header, "images": args.images,
           "batch_size": args.batch_size, "reps": args.reps, "rows": rows}
    table = [f"Batch {args.batch_size}, median of {args.reps} calls; mAP on {args.images} held-out synthetic images; "
             f"agreement = share of {base['option']}'s detections with score >= {CONFIDENT} that have a same-label "
             f"twin at IoU >= {TWIN_IOU}.", "",
             "| option | ms/sample | speedup vs " + base["option"] + " | mAP | mAP delta (points) | agreement | "
             "compile s |", "|---|---|---|---|---|---|---|"]
    table += [f"| {r['option']} | {r['ms_per_sample']:.1f} | {r['speedup']:.2f}x | {100 * r['map']:.2f} | "
              f"{r['map_delta_points']:+.2f} | {r['agreement']:.3f} | "
              f"{'' if r['compile_s'] is None else round(r['compile_s'], 1)} |" for r in rows]
    common.save("precision" + args.suffix, doc, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
