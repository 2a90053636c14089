"""Harness efficiency: Offline samples/s through LoadGen over samples/s of a bare loop. Goal >= 0.95.

Both sides use the same loaded backend, batch size, two-scale config and
preloaded data, in one process, alternated ``--repeats`` times. Each pair is a
real LoadGen Offline performance run of about ``--seconds`` (its expected rate
is the previous bare rate), then the bare loop doing the same work: as many
samples as LoadGen issued, cut into the same batches (full ones, then the
remainder), ``backend.predict`` on batches gathered before timing. The ratio
of each pair is taken, and the median quoted. On CUDA the Model FLOP
Utilization is printed too.

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


def bare_offline(backend, batches: list, samples: int) -> float:
    """samples/s of back-to-back ``predict`` calls on ``samples`` samples, cycling through ``batches``.

    The last call takes only the rows still needed, as the Offline SUT's last batch does.
    """
    done, i = 0, 0
    common.sync(backend)
    t0 = time.perf_counter()
    while done < samples:
        images, hw = batches[i % len(batches)]
        n = min(hw.shape[0], samples - done)
        if n < hw.shape[0]:
            images, hw = {s: t[:n] for s, t in images.items()}, hw[:n]
        backend.predict(images, hw)
        done += n
        i += 1
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
        bare = common.in_thread(bare_offline, backend, batches, args.batch_size)     # a first guess of the rate for LoadGen
        for r in range(args.repeats):
            run = common.loadgen_run(cfg, backend, dataset, tmp / "out", "Offline", offline_expected_qps=bare)
            lg = run.loadgen.samples_per_s or 0.0
            bare = common.in_thread(bare_offline, backend, batches, run.issued)
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
