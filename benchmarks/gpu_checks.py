"""The CUDA path's checks on the full SSD-ResNet34, with figures: CUDA vs CPU, capture, graph memory, a profile.

Run by benchmarks/gpu_suite.py on a GPU machine (each mode a child process
with a time limit); random weights unless the config's checkpoint is given,
synthetic images (seed 0) from the benchmarks' shared data set.

    python benchmarks/gpu_checks.py checks  [--config configs/ssd300_600.toml] [--batch-size 32]
    python benchmarks/gpu_checks.py profile [--config configs/ssd300_600.toml] [--batch-size 32] [--iters 10]

``checks``, on cuda:0 with its ``CUDA_WORKERS_PER_GPU`` workers (with
``--compile`` also the compiles per device and the frames that ran eagerly):

- capture: the warm-up captures the Offline shapes of a query of
  ``3 x batch + 5`` samples (the full batch, the remainder 5, and 1) for every
  worker, each on its own stream; both workers then predict the same batches
  (``--images``: by default three full ones and the remainder) at once from
  their own threads: no shape runs eagerly, and the two agree byte for byte;
- memory: device memory the warm-up left reserved (the graph pools and input
  buffers, after ``empty_cache``) against backends/pytorch/graph_memory.py's estimate;
- capture memory: what the warm-up measured for the largest batch's graphs
  (``mem_get_info`` around its capture) and its ratio to the estimate, which
  scaled the check of every later capture (backends/pytorch/warmup.py);
- host slot: after ``predict`` returns, the copy from the staged batch's
  pinned host buffer has completed (its event), so the slot may be reused;
- NMS: post-processing of one batch's real network outputs on the GPU: host
  syncs counted with ``torch.cuda.set_sync_debug_mode`` (at most one; the
  copy back is the other), milliseconds per batch, and the same detections as
  the CPU form on the same inputs, bit for bit;
- detections: CUDA (the config's precision) against the CPU in fp32 on the
  same images: the share of the CPU's best detections per image that have a
  same-label twin in the CUDA output, and the largest score difference.

``profile``: ``torch.profiler`` over ``--iters`` predicts of one batch by one
worker, with CUDA graphs and without: the kernels by self device time, and
device time per predict against wall time. Writes
benchmarks/results/gpu_checks.{json,md} and gpu_profile.{json,md}.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common, gpu_nms  # noqa: E402

GIB = 2 ** 30
TOP_KERNELS = 20
TOP_DETECTIONS = 20     # the reference's best detections per image that must have a twin
TWIN_IOU = 0.9


def top_agreement(ref: list[torch.Tensor], got: list[torch.Tensor]) -> tuple[float, float, int]:
    """Share of ``ref``'s best detections per image with a same-label twin in ``got`` (IoU >= TWIN_IOU),
    the largest score difference of those twins, and how many detections were compared.

    Detections are Tensor[K, 6] (x1, y1, x2, y2, score, label), sorted by score (backends/base.py).
    """
    from torchvision.ops import box_iou
    hits = total = 0
    worst = 0.0
    for r, g in zip(ref, got):
        for row in r[:TOP_DETECTIONS]:
            total += 1
            same = g[g[:, 5] == row[5]]
            if same.shape[0] == 0:
                continue
            ious = box_iou(row[None, :4], same[:, :4])[0]
            best = int(ious.argmax())
            if ious[best] >= TWIN_IOU:
                hits += 1
                worst = max(worst, abs(float(same[best, 4] - row[4])))
    return (hits / total if total else float("nan")), worst, total


def _concurrent(workers: list, batches: list) -> list[list]:
    """Every worker predicts every batch, all workers at once, each from its own thread."""
    out: list[list] = [[] for _ in workers]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            out[i] = [workers[i].predict(*b) for b in batches]
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def checks(args: argparse.Namespace, cfg, note: str, tmp: Path) -> dict:
    from backends.pytorch.backend import PyTorchBackend
    from harness.run.backend import warmup_batch_sizes
    b = args.batch_size
    offline = common.with_run(cfg, scenario="Offline", batch_size=b)
    sizes = warmup_batch_sizes(offline, True, (3 * b + 5,))
    from backends.pytorch import network
    gpu = PyTorchBackend(cfg.model, device="cuda:0")
    gpu.load()
    eager_frames = network.eager_frames() if cfg.model.compile else 0
    workers = gpu.workers()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved(0)
    t0 = time.perf_counter()
    gpu.warmup(sizes)
    warmup_s = time.perf_counter() - t0
    compiles = {"compiles_per_device": dict(network.COMPILES),
                "compile_eager_frames": network.eager_frames() - eager_frames} if cfg.model.compile else {}
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    measured = torch.cuda.memory_reserved(0) - before
    estimate = gpu.graph_memory(sizes)[0]
    runners = gpu.graph_runners()
    dataset = common.make_dataset(tmp, args.images, gpu.sizes, pin_memory=True)
    batches = common.preload_batches(dataset, gpu, b)
    runs = _concurrent(workers, batches)
    same = all(torch.equal(x, y) for a, c in zip(runs[0], runs[1]) for x, y in zip(a, c))
    staged = gpu.stage(*batches[0])
    gpu.predict(*staged)
    slot_free = bool(staged[0].ready.query())
    capture = gpu.capture_memory
    nms = gpu_nms.nms_check(gpu, batches[0])
    cpu = PyTorchBackend(dataclasses.replace(cfg.model, precision="fp32", cuda_graphs=False), device="cpu")
    cpu.load()
    n = min(args.cpu_images, dataset.total_count)
    want = cpu.predict(*dataset.qsl.get_batch(list(range(n))))
    agree, score_diff, compared = top_agreement(want, [d for batch in runs[0] for d in batch][:n])
    return {
        "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "workers": len(workers), "warmed_batch_sizes": list(sizes), "warmup_s": warmup_s,
        "captured_shapes_per_worker": [len(r.shapes) for r in runners],
        "capture_streams": len({id(r._stream) for r in runners}),
        "eager_calls": common.eager_calls(gpu), "workers_agree_byte_for_byte": same,
        "graph_memory_measured_gib": measured / GIB, "graph_memory_estimate_gib": len(workers) * estimate.total / GIB,
        "graph_memory_unshared_estimate_gib": len(workers) * estimate.unshared / GIB,
        "capture_measured_gib": capture.measured / GIB if capture and capture.measured is not None else None,
        "capture_vs_estimate": capture.scale if capture else None,
        "host_slot_copy_done_at_return": slot_free, **nms, **compiles,
        "cuda_vs_cpu_fp32_agreement": agree, "cuda_vs_cpu_max_score_diff": score_diff,
        "cpu_detections_compared": compared, "cpu_images": n,
    }


def _kernel_table(prof, iters: int) -> tuple[list[dict], float]:
    """Rows of the profile's events by self device time (ms per predict), and the device ms per predict."""
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None)
        us = getattr(e, "self_cuda_time_total", 0) if us is None else us
        if us > 0:
            rows.append({"name": e.key, "calls_per_predict": e.count / iters, "ms_per_predict": us / 1e3 / iters})
    rows.sort(key=lambda r: -r["ms_per_predict"])
    total = sum(r["ms_per_predict"] for r in rows)
    for r in rows:
        r["share"] = r["ms_per_predict"] / total if total else 0.0
    return rows, total


def profile(args: argparse.Namespace, cfg, note: str, tmp: Path) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from backends.pytorch.backend import PyTorchBackend
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "batch_size": args.batch_size,
           "iters": args.iters, "runs": {}}
    dataset = None
    for graphs in (True, False):
        backend = PyTorchBackend(dataclasses.replace(cfg.model, cuda_graphs=graphs), device="cuda:0")
        backend.load()
        backend.warmup((args.batch_size,))
        if dataset is None:
            dataset = common.make_dataset(tmp, max(args.images, args.batch_size), backend.sizes, pin_memory=True)
        batch = common.preload_batches(dataset, backend, args.batch_size)[0]
        backend.predict(*batch)
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            for _ in range(args.iters):
                backend.predict(*batch)
            torch.cuda.synchronize()
            wall_ms = 1e3 * (time.perf_counter() - t0) / args.iters
        rows, device_ms = _kernel_table(prof, args.iters)
        out["runs"]["graphs" if graphs else "eager"] = {
            "wall_ms_per_predict": wall_ms, "device_ms_per_predict": device_ms,
            "samples_per_s": args.batch_size * 1e3 / wall_ms, "top": rows[:TOP_KERNELS]}
        del backend
        torch.cuda.empty_cache()
    return out


def _checks_md(doc: dict) -> list[str]:
    return ["| check | figure |", "|---|---|",
            f"| capture | {doc['workers']} workers, batch sizes {doc['warmed_batch_sizes']}, "
            f"{doc['captured_shapes_per_worker']} graphs per worker on {doc['capture_streams']} capture streams, "
            f"warm-up {doc['warmup_s']:.1f} s; eager calls afterwards: {doc['eager_calls'] or 'none'} |",
            f"| concurrent workers | same batches from two threads at once; byte-identical: "
            f"{doc['workers_agree_byte_for_byte']} |",
            f"| graph memory | measured {doc['graph_memory_measured_gib']:.2f} GiB, estimated "
            f"{doc['graph_memory_estimate_gib']:.2f} GiB (one stream per capture would need "
            f"{doc['graph_memory_unshared_estimate_gib']:.2f} GiB) |",
            f"| capture memory | largest batch's graphs measured {_gib(doc['capture_measured_gib'])}, "
            f"{doc['capture_vs_estimate'] or float('nan'):.2f} x the estimate |",
            f"| host slot | pinned input copy complete when predict returns: {doc['host_slot_copy_done_at_return']} |",
            *([f"| torch.compile | compiles per device {doc['compiles_per_device']}, frames run eagerly: "
               f"{doc['compile_eager_frames']} |"] if "compiles_per_device" in doc else []),
            f"| NMS | batch {doc['nms_batch']}, {doc['nms_boxes_per_image']} boxes per image: "
            f"{doc['nms_ms_per_batch']:.2f} ms, {doc['nms_host_syncs']} host sync(s) (goal <= 1), "
            f"same detections as the CPU: {doc['nms_matches_cpu']} |",
            f"| CUDA vs CPU fp32 | {100 * doc['cuda_vs_cpu_fp32_agreement']:.1f}% of the CPU's best "
            f"{doc['cpu_detections_compared']} detections on {doc['cpu_images']} images have a same-label CUDA twin "
            f"at IoU >= {TWIN_IOU}; largest score difference {doc['cuda_vs_cpu_max_score_diff']:.4f} |"]


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} GiB"


def _profile_md(doc: dict) -> list[str]:
    lines = []
    for name, run in doc["runs"].items():
        lines += [f"## {name}: batch {doc['batch_size']}, {run['wall_ms_per_predict']:.2f} ms per predict "
                  f"({run['samples_per_s']:.0f} samples/s), device busy {run['device_ms_per_predict']:.2f} ms", "",
                  "| kernel / op | ms per predict | share | calls per predict |", "|---|---|---|---|"]
        lines += [f"| `{r['name'][:90]}` | {r['ms_per_predict']:.3f} | {100 * r['share']:.1f}% | "
                  f"{r['calls_per_predict']:.1f} |" for r in run["top"]]
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("checks", "profile"))
    common.add_flags(p, images=3 * 32 + 5)   # three full batches of 32 and the remainder the warm-up captured
    p.add_argument("--cpu-images", type=int, default=4, help="images compared against the CPU in fp32")
    p.add_argument("--iters", type=int, default=10, help="profiled predict calls")
    p.set_defaults(config=str(common.ROOT / "configs" / "ssd300_600.toml"), batch_size=32, random_weights=True,
                   device="cuda")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: these checks need one", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        cfg, note = common.resolve_config(args, Path(tmp) / "out", common.write_conf(Path(tmp) / "c.conf", 1))
        doc = (checks if args.mode == "checks" else profile)(args, cfg, note, Path(tmp))
    name = "gpu_checks" if args.mode == "checks" else "gpu_profile"
    head = common.header(cfg, None, note)
    head["machine"] = f"{doc['gpu']}, {head['machine']}"
    doc = {"benchmark": f"CUDA path: {args.mode}", **head, **doc}
    common.save(name + args.suffix, doc, _checks_md(doc) if args.mode == "checks" else _profile_md(doc))
    print("\n".join(_checks_md(doc) if args.mode == "checks" else _profile_md(doc)))
    ok = args.mode != "checks" or (not doc["eager_calls"] and doc["workers_agree_byte_for_byte"]
                                   and doc["host_slot_copy_done_at_return"] and doc["nms_host_syncs"] <= 1
                                   and doc["nms_matches_cpu"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
