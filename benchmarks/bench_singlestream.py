"""SingleStream: LoadGen's p90 latency over the bare single-image latency. Goal <= 1.05.

Both sides use the same loaded backend and preloaded data in one process,
alternated ``--repeats`` times. The bare side times ``backend.predict`` on one
image at a time (inputs gathered before timing), for ``--seconds``, and takes
its p90 (nearest rank); the LoadGen side is a SingleStream performance
run of the same length, whose p90 is LoadGen's (issue to completion, so it
includes the QSL gather, the response record and the completion call). Each
pair's ratio is taken and the median quoted; medians are printed as well.

    .venv/bin/python benchmarks/bench_singlestream.py [--precision bf16] [--seconds 8] [--repeats 3]

Writes benchmarks/results/singlestream.json and singlestream.md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

GOAL = 1.05


def bare_latencies(backend, singles: list, seconds: float) -> list[float]:
    """Seconds per ``predict`` of one image, cycling through ``singles``, for at least ``seconds``."""
    out = []
    t_end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < t_end or i < 2:
        images, hw = singles[i % len(singles)]
        t = time.perf_counter()
        backend.predict(images, hw)
        common.sync(backend)
        out.append(time.perf_counter() - t)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_flags(p, images=32)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        conf = common.write_conf(tmp / "bench.conf", args.seconds)
        cfg, note = common.resolve_config(args, tmp / "out", conf)
        backend = common.build_backend(cfg, (1,))
        dataset = common.make_dataset(tmp, args.images, backend.sizes, pin_memory=backend.device.type == "cuda")
        singles = common.preload_batches(dataset, backend, 1)
        print(f"{common.machine(backend)}\n{args.images} images, {args.seconds:g} s runs, {note}", flush=True)
        pairs = []
        for r in range(args.repeats):
            lat = common.in_thread(bare_latencies, backend, singles, args.seconds)
            bare_p90, bare_p50 = common.percentile(lat, 90), common.median(lat)
            run = common.loadgen_run(cfg, backend, dataset, tmp / "out", "SingleStream",
                                     singlestream_expected_latency_ms=bare_p50 * 1e3)
            lg_p90 = run.loadgen.latency_ns.get("90.00", float("nan")) / 1e9
            lg_p50 = run.loadgen.latency_ns.get("50.00", float("nan")) / 1e9
            pairs.append({"bare_p90_ms": bare_p90 * 1e3, "bare_p50_ms": bare_p50 * 1e3, "bare_count": len(lat),
                          "loadgen_p90_ms": lg_p90 * 1e3, "loadgen_p50_ms": lg_p50 * 1e3,
                          "loadgen_queries": run.issued, "ratio": lg_p90 / bare_p90, "failed": len(run.failures)})
            print(f"  pair {r + 1}: bare p90 {bare_p90 * 1e3:8.2f} ms (p50 {bare_p50 * 1e3:.2f}, {len(lat)} images), "
                  f"LoadGen p90 {lg_p90 * 1e3:8.2f} ms (p50 {lg_p50 * 1e3:.2f}, {run.issued} queries), "
                  f"ratio {lg_p90 / bare_p90:.3f}", flush=True)
    ratio = common.median([x["ratio"] for x in pairs])
    med = {k: common.median([x[k] for x in pairs]) for k in ("bare_p90_ms", "bare_p50_ms", "loadgen_p90_ms",
                                                              "loadgen_p50_ms")}
    print(f"SingleStream p90 / bare p90 (median of {len(pairs)} pairs): {ratio:.3f} (goal <= {GOAL}); "
          f"LoadGen p90 {med['loadgen_p90_ms']:.2f} ms, bare p90 {med['bare_p90_ms']:.2f} ms")
    doc = {"benchmark": "SingleStream: LoadGen p90 latency / bare single-image p90", "goal": f"<= {GOAL}",
           **common.header(cfg, backend, note), "images": args.images, "seconds": args.seconds,
           "ratio_median": ratio, **{k + "_median": v for k, v in med.items()}, "pairs": pairs}
    table = ["| pair | bare p50 ms | bare p90 ms | LoadGen p50 ms | LoadGen p90 ms | ratio (p90) |",
             "|---|---|---|---|---|---|"]
    table += [f"| {i + 1} | {x['bare_p50_ms']:.2f} | {x['bare_p90_ms']:.2f} | {x['loadgen_p50_ms']:.2f} | "
              f"{x['loadgen_p90_ms']:.2f} | {x['ratio']:.3f} |" for i, x in enumerate(pairs)]
    table += [f"| **median** | {med['bare_p50_ms']:.2f} | {med['bare_p90_ms']:.2f} | {med['loadgen_p50_ms']:.2f} | "
              f"{med['loadgen_p90_ms']:.2f} | **{ratio:.3f}** (goal <= {GOAL}) |"]
    common.save("singlestream" + args.suffix, doc, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
