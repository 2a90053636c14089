"""Benchmark cache preparation (decoder x workers) and QSL loading on a synthetic set.

Usage:
    python -m benchmarks.bench_prepare [--num-images 200] [--image-size 300 600] [--data DIR]

Measures, on the same files (read once first, so all runs see a warm page cache):
- decode only, images/s, PIL vs torchvision ``decode_jpeg``, one core;
- full preparation (decode, resize to every size, write the arrays), images/s,
  for each decoder with 1 and 2 worker processes (best of 2 runs);
- the QSL: time to ``load`` a 64-sample set (LoadGen's performance sample
  count) and to ``get_batch`` 8 of them; median of 5.
Prints one line per figure and writes ``benchmarks/results/prepare.json`` and
``prepare.md``. Figures depend on the machine and on its other load.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from qsl.cache.reader import open_cache
from qsl.coco_layout import find_inputs, read_image_list
from qsl.coco_qsl import CocoQSL
from qsl.cache.jpeg import DECODERS, decode_rgb
from qsl.cache.prepare import prepare_cache
from qsl.synthetic.dataset import make_synthetic_coco

RESULTS = Path(__file__).resolve().parent / "results"
REPEATS = 2


def _decode_rate(files: list[Path], decoder: str) -> float:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = float("inf")
        for _ in range(REPEATS):
            start = time.perf_counter()
            for f in files:
                decode_rgb(f, decoder)
            best = min(best, time.perf_counter() - start)
        return len(files) / best
    finally:
        torch.set_num_threads(threads)


def _median_s(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(data: Path, sizes: list[int], work: Path) -> dict:
    ann, image_dir = find_inputs(data)
    images = read_image_list(ann)
    files = [image_dir / im["file_name"] for im in images]
    for f in files:
        f.read_bytes()  # warm the page cache so every configuration reads from RAM
    out: dict = {"num_images": len(files), "sizes": sizes, "decode_only_img_per_s": {}, "prepare_img_per_s": {}}
    for decoder in DECODERS:
        rate = _decode_rate(files, decoder)
        out["decode_only_img_per_s"][decoder] = round(rate, 1)
        print(f"decode only      decoder={decoder:11s}            {rate:8.1f} img/s")
    cache_dir = None
    for decoder in DECODERS:
        for workers in (1, 2):
            cache_dir = work / f"cache_{decoder}_{workers}"
            best = float("inf")
            for _ in range(REPEATS):  # best of a few: the cores are shared, other load only slows a run down
                start = time.perf_counter()
                prepare_cache(data, sizes, cache_dir, workers=workers, progress=False, decoder=decoder)
                best = min(best, time.perf_counter() - start)
            rate = len(files) / best
            out["prepare_img_per_s"][f"{decoder}/workers={workers}"] = round(rate, 1)
            print(f"prepare {'/'.join(map(str, sizes))}  decoder={decoder:11s} workers={workers}  {rate:8.1f} img/s")
    cache = open_cache(work / "cache_torchvision_2", sizes)
    qsl = CocoQSL(cache, perf_count=min(64, cache.num_images))
    rng = np.random.default_rng(0)
    chosen = sorted(rng.choice(cache.num_images, size=qsl.perf_count, replace=False).tolist())
    load_s = _median_s(lambda: qsl.load(chosen))
    batch = chosen[:8]
    batch_s = _median_s(lambda: qsl.get_batch(batch), repeats=20)
    out["qsl"] = {"perf_count": qsl.perf_count, "load_s": round(load_s, 4), "loaded_mib": round(qsl.loaded_bytes / 2**20, 1),
                  "get_batch_8_ms": round(batch_s * 1e3, 3)}
    print(f"QSL load {qsl.perf_count} samples ({out['qsl']['loaded_mib']} MiB)            {load_s * 1e3:8.1f} ms")
    print(f"QSL get_batch of 8                          {batch_s * 1e3:8.3f} ms")
    return out


def _markdown(res: dict) -> str:
    lines = [f"# Cache preparation and QSL load ({res['date']})", "",
             f"Machine: {res['machine']}. Command: `{res['command']}`.",
             f"{res['num_images']} synthetic JPEGs (sides 320-640 px), sizes {res['sizes']}, warm page cache, "
             f"best of {REPEATS} runs; the machine's cores were shared (load average {res['load_average']}), "
             "so figures vary between runs.", "",
             "| what | images/s |", "|---|---|"]
    for k, v in res["decode_only_img_per_s"].items():
        lines.append(f"| decode only, {k}, 1 core | {v} |")
    for k, v in res["prepare_img_per_s"].items():
        lines.append(f"| prepare (decode + resize + write), {k} | {v} |")
    q = res["qsl"]
    lines += ["", f"QSL: load of {q['perf_count']} samples ({q['loaded_mib']} MiB) {q['load_s'] * 1e3:.1f} ms; "
              f"get_batch of 8: {q['get_batch_8_ms']} ms (medians).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=200, help="synthetic images to generate")
    parser.add_argument("--image-size", type=int, nargs="+", default=[300, 600], help="cache sizes")
    parser.add_argument("--data", help="use this COCO-layout folder instead of a synthetic set")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        work = Path(tmp)
        data = Path(args.data) if args.data else work / "data"
        if not args.data:
            make_synthetic_coco(data, args.num_images, seed=0)
        res = run(data, args.image_size, work)
    res.update({
        "load_average": round(os.getloadavg()[0], 1),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "command": "python -m benchmarks.bench_prepare "
                   + (f"--data {args.data} " if args.data else f"--num-images {args.num_images} ")
                   + "--image-size " + " ".join(map(str, args.image_size)),
    })
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "prepare.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / "prepare.md").write_text(_markdown(res))
    print(f"wrote {RESULTS / 'prepare.json'} and prepare.md")


if __name__ == "__main__":
    main()
