"""Harness efficiency: Offline samples/s through LoadGen over samples/s of a bare loop. Goal >= 0.95.

Both sides use the same loaded backend, batch size, two-scale config and
preloaded data, in one process, alternated ``--repeats`` times. The bare loop
calls ``backend.predict`` on batches gathered before timing, for ``--seconds``,
cycling through the data; the LoadGen side is a real Offline performance run
(same length; its expected rate is the bare loop's, so the one query lasts
about as long). The ratio of each pair is taken, and the median quoted. On
CUDA the Model FLOP Utilization of both sides is printed too.

    .venv/bin/python benchmarks/bench_efficiency.py [--precision bf16] [--seconds 8] [--repeats 3]

Writes benchmarks/results/efficiency.json and efficiency.md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402
from benchmarks.flops import flops_per_sample, mfu  # noqa: E402

GOAL = 0.95


def bare_offline(backend, batches: list, seconds: float) -> float:
    """samples/s of back-to-back ``predict`` calls over ``batches`` for at least ``seconds``."""
    done, i = 0, 0
    common.sync(backend)
    t0 = time.perf_counter()
    while True:
        images, hw = batches[i % len(batches)]
        backend.predict(images, hw)
        done += hw.shape[0]
        i += 1
        if time.perf_counter() - t0 >= seconds and i >= len(batches):
            break
    common.sync(backend)
    return done / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_flags(p)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        conf = common.write_conf(tmp / "bench.conf", args.seconds)
        cfg, note = common.resolve_config(args, tmp / "out", conf)
        backend = common.build_backend(cfg, (1, args.batch_size))
        dataset = common.make_dataset(tmp, args.images, backend.sizes, pin_memory=backend.device.type == "cuda")
        batches = common.preload_batches(dataset, backend, args.batch_size)
        flops = flops_per_sample(cfg.model)
        dev = common.device_name(backend)
        print(f"{common.machine(backend)}\n{args.images} images, batch {args.batch_size}, {args.seconds:g} s runs, "
              f"{flops / 1e9:.1f} GFLOP/sample, {note}", flush=True)
        pairs = []
        for r in range(args.repeats):
            bare = bare_offline(backend, batches, args.seconds)
            run = common.loadgen_run(cfg, backend, dataset, tmp / "out", "Offline", offline_expected_qps=bare)
            lg = run.loadgen.samples_per_s or 0.0
            pairs.append({"bare_samples_per_s": bare, "loadgen_samples_per_s": lg, "ratio": lg / bare,
                          "validity": run.loadgen.validity, "failed": len(run.failures), "samples": run.issued})
            print(f"  pair {r + 1}: bare {bare:8.2f} samples/s, LoadGen Offline {lg:8.2f} samples/s "
                  f"({run.issued} samples, {run.loadgen.validity}), ratio {lg / bare:.3f}", flush=True)
    ratio = common.median([x["ratio"] for x in pairs])
    bare_med = common.median([x["bare_samples_per_s"] for x in pairs])
    lg_med = common.median([x["loadgen_samples_per_s"] for x in pairs])
    util = mfu(lg_med, flops, dev)
    print(f"harness efficiency (median of {len(pairs)} pairs): {ratio:.3f} (goal >= {GOAL}); "
          f"bare {bare_med:.2f}, LoadGen {lg_med:.2f} samples/s; "
          + (f"MFU {100 * util:.1f}% of {dev} fp16 peak" if util is not None else f"MFU n/a on {dev}"))
    doc = {"benchmark": "Harness efficiency: Offline through LoadGen / bare loop", "goal": f">= {GOAL}",
           **common.header(cfg, backend, note), "batch_size": args.batch_size, "images": args.images,
           "seconds": args.seconds, "ratio_median": ratio, "bare_samples_per_s_median": bare_med,
           "loadgen_samples_per_s_median": lg_med, "gflops_per_sample": flops / 1e9, "mfu": util, "pairs": pairs}
    table = ["| pair | bare samples/s | LoadGen Offline samples/s | ratio |", "|---|---|---|---|"]
    table += [f"| {i + 1} | {x['bare_samples_per_s']:.2f} | {x['loadgen_samples_per_s']:.2f} | {x['ratio']:.3f} |"
              for i, x in enumerate(pairs)]
    table += [f"| **median** | {bare_med:.2f} | {lg_med:.2f} | **{ratio:.3f}** (goal >= {GOAL}) |"]
    if util is not None:
        table += ["", f"MFU (LoadGen Offline): {100 * util:.1f}% of the {dev} dense fp16 peak."]
    common.save("efficiency" + args.suffix, doc, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
