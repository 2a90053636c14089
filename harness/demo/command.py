"""The embedded default: the whole product on data and a model shipped with the project.

    python run.py demo [--output results/demo] [--data demo_data] [--num-images 200] [--config configs/demo.toml]
                       [--precision auto|fp32|bf16|fp16]

Phases: generate the held-out synthetic COCO-format set if missing (seed 0,
the same images the demo detector was validated on, never trained on),
prepare the cache, run LoadGen Offline in accuracy then performance mode with
the short ``configs/short.conf``, and write two pictures next to the logs:
``detections.png`` (a few images with their detections) and
``latency_<scenario>.png`` (per-sample latency of the performance run).
Exit status as ``run.py``: 0 done, 1 failed samples or no accuracy figure.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from backends.model_config import PRECISIONS
from harness.settings.checkpoint_path import missing_config_checkpoint
from harness.settings.config import SCENARIOS, Config, load_config, model_keys_in_file
from ground.errors import InputError
from qsl.coco_layout import default_annotation_file

if TYPE_CHECKING:   # the run's modules import torch: only once the flags are known to be good
    from harness.results.result_types import RunResult

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "configs" / "demo.toml"
SHORT_CONF = ROOT / "configs" / "short.conf"
DEMO_SEED = 0          # the demo detector trains on seed 1000+ and is validated on seed 0
PICTURE_IMAGES = 6


def demo_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="results/demo", help="output folder (default results/demo)")
    p.add_argument("--data", default="demo_data", help="demo data folder, generated when missing (default demo_data)")
    p.add_argument("--num-images", type=int, default=200, help="held-out images to generate and evaluate")
    p.add_argument("--config", default=str(DEMO_CONFIG), help="model config (default configs/demo.toml)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="network precision (default: the config's, auto: bf16 on a CPU with native bf16, fp32 on "
                        "other CPUs, fp16 on CUDA)")
    p.add_argument("--scenario", default="Offline", choices=SCENARIOS)
    p.add_argument("--user-conf", default=str(SHORT_CONF), help="LoadGen settings (default configs/short.conf)")
    return p


class DemoConfigError(InputError, ValueError):
    """The demo's config names a checkpoint that is not where the config says."""


class DemoDataError(InputError, ValueError):
    """The demo's data folder holds something the demo did not write; it is never overwritten."""


def _demo_made(ann: Path) -> dict | None:
    """The annotation file's contents if the demo generated it (synthetic, seed DEMO_SEED), else None."""
    import json

    from qsl.synthetic.dataset import synthetic_description
    try:
        doc = json.loads(ann.read_text())
    except (OSError, ValueError):
        return None
    made = isinstance(doc, dict) and isinstance(doc.get("images"), list) and \
        doc.get("info", {}).get("description") == synthetic_description(DEMO_SEED)
    return doc if made else None


def ensure_demo_data(data_dir: Path, num_images: int) -> Path:
    """The held-out synthetic set in ``data_dir``: generated when the folder is missing or empty, regenerated
    when it holds a demo set of another size. A folder with anything else in it is refused, never overwritten.
    """
    from qsl.synthetic.dataset import make_synthetic_coco
    if num_images < 1:
        raise DemoDataError(f"--num-images must be at least 1, got {num_images}")
    ann = default_annotation_file(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise DemoDataError(f"--data {data_dir} is a file; give a folder for the demo's generated images")
    if data_dir.is_dir() and any(data_dir.iterdir()):
        doc = _demo_made(ann)
        if doc is None:
            raise DemoDataError(f"--data {data_dir} holds files the demo did not generate; the demo writes its "
                                "own synthetic images there, so give a new or empty folder (to run on your own "
                                "data, use: python run.py --data " + str(data_dir) + " ...)")
        if len(doc["images"]) == num_images:
            return ann
    print(f"[demo] generating {num_images} synthetic COCO-format images in {data_dir}", flush=True)
    make_synthetic_coco(data_dir, num_images, seed=DEMO_SEED, split="val2017")
    return ann


def write_pictures(result: "RunResult", annotation_file: Path, out_dir: Path) -> list[Path]:
    """detections.png from the accuracy run, a latency histogram from the performance run."""
    import json

    from harness.accuracy.coco import coco_result_list, records_to_coco
    from harness.accuracy.evaluate import decode_entries, read_accuracy_log
    from harness.report.plots import draw_detections, run_latency_histogram
    written = []
    dataset = json.loads(annotation_file.read_text())
    images = dataset["images"]
    names = {c["id"]: c["name"] for c in dataset["categories"]}
    for run in result.runs:
        if run.mode == "accuracy":
            entries, _ = read_accuracy_log(run.out_dir / "mlperf_log_accuracy.json")
            records, _, _ = decode_entries(entries, len(images))
            rows = records_to_coco(records, images, sorted(names))
            annotated = {a["image_id"] for a in dataset["annotations"]}
            shown = [i for i in images if i["id"] in annotated][:PICTURE_IMAGES]
            image_dir = annotation_file.parent.parent / "val2017"
            written.append(draw_detections([(image_dir / i["file_name"], i["id"]) for i in shown],
                                           coco_result_list(rows), names, out_dir / "detections.png"))
        elif run.latencies_s:
            written.append(run_latency_histogram(run.out_dir, run.latencies_s,
                                                 out_dir / f"latency_{result.scenario}.png",
                                                 f"{result.scenario} {run.mode}, per-sample latency"))
    return written


def demo_config(args: argparse.Namespace) -> Config:
    """The demo's config: ``--config`` with the demo's data, output and run; DemoConfigError when its checkpoint is
    missing."""
    config = load_config(args.config, {
        "model": {"precision": args.precision},
        "data": {"data_dir": args.data, "cache_dir": str(Path(args.data) / "ssd_cache")},
        "run": {"scenario": args.scenario, "mode": "accuracy", "output_dir": args.output,
                "system_name": "demo", "user_conf": args.user_conf},
    })
    ckpt = config.model.checkpoint
    if ckpt and not Path(ckpt).is_file():
        raise DemoConfigError(missing_config_checkpoint(ckpt, args.config))
    return config


def _precision_in_force(backend: object) -> str:
    """"bf16 (auto: ...)": the precision the backend runs in and why (the config's when it has none)."""
    while hasattr(backend, "inner"):
        backend = backend.inner
    why = getattr(backend, "precision_reason", None)
    return f"{backend.cfg.precision} ({why})" if why else str(backend.cfg.precision)


def main(argv: list[str]) -> int:
    args = demo_parser().parse_args(argv)
    t0 = time.monotonic()
    config = demo_config(args)
    ann = ensure_demo_data(Path(args.data), args.num_images)
    from harness.run.preflight import check_inputs
    config = check_inputs(config, model_keys_in_file(args.config))
    from harness.report.markdown import write_report
    from harness.report.summary import format_summary
    from harness.results.layout import scenario_dir
    from harness.run.backend import build_backend
    from harness.run.benchmark import run_benchmark
    from harness.run.dataset import open_dataset
    backend = build_backend(config)
    print(f"[demo] model {config.model.checkpoint} ({config.model.backbone}), precision {_precision_in_force(backend)}"
          f", sizes {list(config.model.image_size)}; {args.scenario} accuracy + performance with {args.user_conf}",
          flush=True)
    dataset = open_dataset(config.data, backend.sizes)
    result = run_benchmark(config, backend, dataset, progress=True)
    perf = dataclasses.replace(config, run=dataclasses.replace(config.run, mode="performance"))
    result.runs += run_benchmark(perf, backend, dataset, progress=True).runs
    result.mode = "accuracy + performance"
    print(format_summary(result))
    for path in write_pictures(result, ann, Path(args.output)):
        print(f"[demo] picture: {path}")
    print(f"[demo] report: {write_report(scenario_dir(args.output, config.run.system_name, args.scenario))}")
    print(f"[demo] done in {time.monotonic() - t0:.0f} s; logs under {args.output}")
    return result.exit_code
