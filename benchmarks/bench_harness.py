"""Harness capacity: samples/s the LoadGen harness sustains with a backend that does nothing.

The null backend returns 2 fixed detections per image at once, and the QSL is
in memory, so what is measured is LoadGen, the SUT's queues and threads, the
response records and the completion calls. Each scenario runs with its own
short LoadGen settings (written to a temporary file): Offline and MultiStream
report samples/s, SingleStream the sample rate of its one-at-a-time loop, and
Server the highest offered rate tried that stays VALID.

    python benchmarks/bench_harness.py [--seconds 2]

Writes benchmarks/results/harness.json and harness.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.null import NullBackend  # noqa: E402
from harness.run.benchmark import run_benchmark  # noqa: E402
from harness.run.dataset import Dataset  # noqa: E402
from harness.settings.config import load_config  # noqa: E402
from qsl.memory_qsl import MemoryQSL  # noqa: E402

GOAL = 20000.0
SERVER_RATES = (10000, 20000, 30000, 40000, 60000)


def _conf(seconds: float) -> str:
    ms = int(seconds * 1000)
    return (f"ssd-resnet34.*.performance_sample_count_override = 64\n"
            f"ssd-resnet34.*.min_duration = {ms}\nssd-resnet34.*.min_query_count = 100\n"
            "ssd-resnet34.Server.target_latency = 100\nssd-resnet34.MultiStream.samples_per_query = 8\n")


def run_one(scenario: str, conf: Path, out: Path, **run) -> dict:
    cfg = load_config(None, {"run": {"scenario": scenario, "mode": "performance", "user_conf": str(conf),
                                     "output_dir": str(out), **run}})
    r = run_benchmark(cfg, NullBackend(), Dataset(MemoryQSL(1024, sizes=(8,))))
    lg = r.runs[0].loadgen
    return {"scenario": scenario, "validity": lg.validity, "samples_per_s": lg.samples_per_s,
            "p50_ms": lg.latency_ns.get("50.00", 0) / 1e6, "p99_ms": lg.latency_ns.get("99.00", 0) / 1e6,
            "failed": len(r.runs[0].failures), "settings": run}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=2.0, help="LoadGen min_duration per run")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "bench.conf"
        conf.write_text(_conf(args.seconds))
        out = Path(tmp) / "out"
        rows.append(run_one("Offline", conf, out, offline_expected_qps=100000.0, batch_size=64))
        rows.append(run_one("MultiStream", conf, out, multistream_expected_latency_ms=0.01))
        rows.append(run_one("SingleStream", conf, out, singlestream_expected_latency_ms=0.01))
        best = None
        for qps in SERVER_RATES:
            row = run_one("Server", conf, out, server_target_qps=float(qps), server_max_batch=64,
                          server_max_wait_ms=1.0)
            print(f"  Server at {qps} QPS: {row['validity']}, {row['samples_per_s']:.0f} samples/s, "
                  f"p99 {row['p99_ms']:.2f} ms", flush=True)
            if row["validity"] != "VALID":
                break
            best = row
        rows.append(best or row)
    for r in rows:
        print(f"{r['scenario']:>12}: {r['samples_per_s']:>10.0f} samples/s  {r['validity']:<7} "
              f"p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  failed {r['failed']}")
    doc = {"benchmark": "harness capacity, null backend", "goal_samples_per_s": GOAL,
           "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
           f"Python {platform.python_version()}", "seconds_per_run": args.seconds, "results": rows,
           "command": "python benchmarks/bench_harness.py --seconds %g" % args.seconds}
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "harness.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = ["# Harness capacity (null backend)\n", f"`{doc['command']}`, {doc['date']}, {doc['machine']}.\n",
          "| scenario | samples/s | result | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    md += [f"| {r['scenario']} | {r['samples_per_s']:.0f} | {r['validity']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} |"
           for r in rows]
    (res / "harness.md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
