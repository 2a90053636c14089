"""Post-processing cost (decode + softmax + NMS) next to the network's own forward time.

For each input size the box count is the real one (default boxes at that size);
offsets are N(0, 1) and class logits are random but scaled so that thousands
of (box, class) pairs pass the 0.05 score threshold, as a trained model's do
(its NMS load is the point here). The forward is SSD-ResNet34, fp32, batch 1,
random weights, median of a few runs on this machine's CPU. The goal is post-
processing below 10% of the forward. Writes benchmarks/results/postprocess.json
and .md.

    .venv/bin/python benchmarks/bench_postprocess.py [--threads N]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from backends.ssd.boxes import class_scores, decode_boxes  # noqa: E402
from backends.ssd.default_boxes import default_boxes  # noqa: E402
from backends.ssd.model import SSDResNet  # noqa: E402
from backends.ssd.postprocess import postprocess  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CASES = [  # (label, [(size, dboxes_scale)], forward reps)
    ("300", [(300, 1.0)], 5),
    ("600", [(600, 1.0)], 3),
    ("700 (scale 2)", [(700, 2.0)], 3),
    ("1400 (scale 2)", [(1400, 2.0)], 1),
    ("700+1400 two-scale union", [(700, 2.0), (1400, 2.0)], 0),   # forward = sum of the two above
]
NUM_CLASSES = 81


def median_ms(fn, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def fake_outputs(num_boxes: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """locs [1, 4, B] ~ N(0, 1); confs [1, 81, B]: background favoured so that thousands of pairs pass 0.05."""
    locs = torch.randn(1, 4, num_boxes, generator=gen)
    confs = 2.0 * torch.randn(1, NUM_CLASSES, num_boxes, generator=gen)
    confs[:, 0] += 8.0
    return locs, confs


def post_ms(parts: list[tuple[int, float]], reps: int, gen: torch.Generator) -> tuple[float, int, int]:
    dboxes = [default_boxes(s, scale) for s, scale in parts]
    outs = [fake_outputs(d.shape[0], gen) for d in dboxes]

    def run():
        boxes = torch.cat([decode_boxes(l, d) for (l, _), d in zip(outs, dboxes)], 1)
        scores = torch.cat([class_scores(c) for _, c in outs], 2)
        return postprocess(boxes, scores)

    scores = torch.cat([class_scores(c) for _, c in outs], 2)
    candidates = int((scores[:, 1:] > 0.05).sum())
    return median_ms(run, reps), candidates, run()[0].shape[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steadier on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = SSDResNet(NUM_CLASSES, "resnet34").eval().to(memory_format=torch.channels_last)
    forward: dict[int, float] = {}
    rows = []
    for label, parts, reps in CASES:
        for size, _ in parts:
            if size not in forward and reps:
                x = torch.zeros(1, 3, size, size).contiguous(memory_format=torch.channels_last)
                with torch.inference_mode():
                    forward[size] = median_ms(lambda: model(x), reps, warmup=1 if size < 1400 else 0)
        post, cand, kept = post_ms(parts, 7, gen)
        fwd = sum(forward.get(s, float("nan")) for s, _ in parts)
        boxes = sum(default_boxes(s, sc).shape[0] for s, sc in parts)
        row = {"case": label, "boxes": boxes, "candidates_above_0.05": cand, "detections": kept,
               "post_ms": round(post, 2), "forward_ms": round(fwd, 1), "post_over_forward": round(post / fwd, 4)}
        rows.append(row)
        print(f"{label:>26}: {boxes:7d} boxes, {cand:6d} candidates, post {post:7.1f} ms, "
              f"forward {fwd:8.1f} ms, post/forward {100 * post / fwd:5.1f}%", flush=True)
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.processor()
            or platform.machine(), "torch": torch.__version__,
            "threads": args.threads, "command": "benchmarks/bench_postprocess.py " + " ".join(sys.argv[1:]),
            "note": "forward: SSD-ResNet34 fp32, batch 1, random weights, channels_last; post: decode + softmax "
                    "+ threshold + top-200/class + NMS + top-200, fp32, batch 1; medians"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "postprocess.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# Post-processing vs forward ({meta['date']}, {meta['machine']}, {args.threads} threads, "
             f"torch {torch.__version__})", "", f"Command: `.venv/bin/python {meta['command'].strip()}`", "",
             "| case | boxes | candidates > 0.05 | post ms | forward ms | post / forward |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['boxes']} | {r['candidates_above_0.05']} | {r['post_ms']} | {r['forward_ms']} | "
              f"{100 * r['post_over_forward']:.1f}% |" for r in rows]
    lines += ["", meta["note"] + "."]
    (RESULTS / "postprocess.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
