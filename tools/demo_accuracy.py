"""Accuracy of the demo detector, single-scale against the two-scale variants, on held-out images.

    python tools/demo_accuracy.py [--data demo_data_eval] [--num-images 200] [--precision fp32]

Every variant runs through the product's own path (cache, QSL, PyTorch
backend, post-processing, accuracy evaluation: ``harness.run.evaluate``) on the
same held-out synthetic images (seed 0; the detector trained on seed 1000).
Prints a Markdown table of AP, AP50, AP_small, AP_medium and AP_large,
and writes it with the raw stats to ``benchmarks/results/demo_accuracy.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.demo.command import DEMO_CONFIG, ensure_demo_data  # noqa: E402
from harness.run.backend import build_backend  # noqa: E402
from harness.run.dataset import open_dataset  # noqa: E402
from harness.run.evaluate import evaluate_direct  # noqa: E402
from harness.settings.config import load_config  # noqa: E402

ALL = (1, 1, 1, 1, 1, 1)
# name -> [model] overrides of configs/demo.toml
VARIANTS = {
    "300 single-scale": {"image_size": [300, 300]},
    "600 single-scale": {"image_size": [600, 600]},
    "300 + 600": {"image_size": [300, 600]},
    "300 + 600, use_filter": {"image_size": [300, 600], "use_filter": True},
    "300 + 600, masks 0 1 1 1 1 1 / 1 1 1 1 0 0": {"image_size": [300, 600], "small_mask": [0, 1, 1, 1, 1, 1],
                                                   "large_mask": [1, 1, 1, 1, 0, 0]},
    "300 + 600, masks 1 1 1 1 1 1 / 1 1 0 0 0 0": {"image_size": [300, 600], "small_mask": list(ALL),
                                                   "large_mask": [1, 1, 0, 0, 0, 0]},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="demo_data_eval", help="held-out set folder (generated when missing)")
    p.add_argument("--num-images", type=int, default=200)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "demo_accuracy"))
    args = p.parse_args(argv)
    ensure_demo_data(Path(args.data), args.num_images)
    rows = []
    for name, model in VARIANTS.items():
        config = load_config(DEMO_CONFIG, {"model": {**model, "precision": args.precision},
                                           "data": {"data_dir": args.data,
                                                    "cache_dir": str(Path(args.data) / "ssd_cache")}})
        backend = build_backend(config, per_image=False)  # batch-invariant bytes are not needed for mAP
        dataset = open_dataset(config.data, (300, 600), progress=False)  # one cache serves every variant
        report = evaluate_direct(backend, dataset, config.run.batch_size, progress=False)
        s = report.stats
        rows.append({"variant": name, "AP": s[0], "AP50": s[1], "AP_small": s[3], "AP_medium": s[4],
                     "AP_large": s[5], "detections": report.detections, "stats": s})
        print(f"{name}: AP {s[0]:.3f} small {s[3]:.3f} medium {s[4]:.3f} large {s[5]:.3f}", flush=True)
    command = "python tools/demo_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    head = (f"# Demo detector accuracy ({date.today()}, {platform.machine()} CPU, {args.precision})\n\n"
            f"Command: `{command.strip()}`. {args.num_images} held-out synthetic images (seed 0), "
            "models/demo_ssd18_300.pt trained at 300x300.\n\n"
            "| variant | AP | AP50 | AP_small | AP_medium | AP_large |\n|---|---|---|---|---|---|\n")
    table = "".join(f"| {r['variant']} | {r['AP']:.3f} | {r['AP50']:.3f} | {r['AP_small']:.3f} | "
                    f"{r['AP_medium']:.3f} | {r['AP_large']:.3f} |\n" for r in rows)
    print(head + table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(head + table)
    out.with_suffix(".json").write_text(json.dumps({"command": command.strip(), "date": str(date.today()),
                                                    "precision": args.precision, "images": args.num_images,
                                                    "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
