"""Harness efficiency: Offline samples/s through LoadGen over samples/s of a bare loop. Goal >= 0.95.

Both sides use the same loaded backend, batch size, two-scale config and
preloaded data, in one process, alternated ``--repeats`` times, and the same
workers: the LoadGen run's pipeline gives each worker of the backend (one on
a CPU; on CUDA ``CUDA_WORKERS_PER_GPU`` per GPU) its own compute thread, and
so does the bare loop, each thread staging its next batch (the host-to-device
copy, on CUDA) before predicting the current one. Each pair is a real LoadGen
Offline performance run of about ``--seconds`` (its expected rate is the
previous bare rate), then the bare loop doing the same work: as many samples
as LoadGen issued, cut into the same batches (full ones, then the remainder),
on batches gathered before timing. With CUDA graphs the remainder batch of
each LoadGen query is captured before the pair starts, as the harness's
warm-up does. The ratio of each pair is taken, and the median quoted. On CUDA
the Model FLOP Utilization is printed too.

    .venv/bin/python benchmarks/bench_efficiency.py [--precision bf16] [--seconds 8] [--repeats 3]

Writes benchmarks/results/efficiency.json and efficiency.md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.base import slice_batch  # noqa: E402
from benchmarks import common  # noqa: E402
from benchmarks.flops import flops_per_sample, mfu  # noqa: E402
from harness.sut.pipeline import backend_workers  # noqa: E402

GOAL = 0.95


def bare_offline(backend, batches: list, samples: int) -> float:
    """samples/s of back-to-back ``predict`` calls on ``samples`` samples, cycling through ``batches``.

    One thread per worker of ``backend`` (as the pipeline runs them), taking the next batch from
    a shared counter; each stages its next batch before predicting the current one. The last
    batch takes only the rows still needed, as the Offline SUT's last batch does.
    """
    plan, done = [], 0
    while done < samples:
        images, hw = batches[len(plan) % len(batches)]
        n = min(hw.shape[0], samples - done)
        plan.append((images, hw) if n == hw.shape[0] else slice_batch(images, hw, 0, n))
        done += n
    lock, nxt = threading.Lock(), iter(plan)

    def take():
        with lock:
            return next(nxt, None)

    def work(worker) -> None:
        threads = getattr(worker, "threads", 0)
        if threads:
            torch.set_num_threads(threads)
        stage = getattr(worker, "stage", None) or (lambda images, hw: (images, hw))
        item = take()
        staged = stage(*item) if item is not None else None
        while staged is not None:
            item = take()
            following = stage(*item) if item is not None else None
            worker.predict(*staged)
            staged = following

    workers = backend_workers(backend)
    common.sync(backend)
    t0 = time.perf_counter()
    if len(workers) == 1:
        work(workers[0])
    else:
        threads = [threading.Thread(target=work, args=(w,), name=f"bare{i}") for i, w in enumerate(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
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
        workers = len(backend_workers(backend))
        print(f"{common.machine(backend)}\n{args.images} images, batch {args.batch_size}, {args.seconds:g} s runs, "
              f"{workers} worker(s) on both sides, {flops / 1e9:.1f} GFLOP/sample, {note}", flush=True)
        pairs = []
        bare = common.in_thread(bare_offline, backend, batches, args.batch_size)     # a first guess of the rate for LoadGen
        for r in range(args.repeats):
            common.warm_offline_query(cfg, backend, bare)
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
           "loadgen_samples_per_s_median": lg_med, "gflops_per_sample": flops / 1e9, "mfu": util, "workers": workers,
           "eager_calls": common.eager_calls(backend), "pairs": pairs}
    table = ["| pair | bare samples/s | LoadGen Offline samples/s | ratio |", "|---|---|---|---|"]
    table += [f"| {i + 1} | {x['bare_samples_per_s']:.2f} | {x['loadgen_samples_per_s']:.2f} | {x['ratio']:.3f} |"
              for i, x in enumerate(pairs)]
    table += [f"| **median** | {bare_med:.2f} | {lg_med:.2f} | **{ratio:.3f}** (goal >= {GOAL}) |", "",
              f"Both sides ran {workers} worker(s), each in its own thread."]
    if util is not None:
        table += ["", f"MFU (LoadGen Offline): {100 * util:.1f}% of the {dev} dense fp16 peak."]
    common.save("efficiency" + args.suffix, doc, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
