"""What the model benchmarks share: flags, the model, tiny data, short LoadGen runs, result files.

Assumptions: a benchmark compares the harness with a bare loop side by side in
ONE process (same backend object, same preloaded data, same thread settings),
alternating the two a few times and quoting medians, because the machines here
are shared and noisy. The data is a small synthetic COCO-layout set (seed 0,
the demo detector's held-out images) prepared into a temporary cache, and
LoadGen runs use a temporary settings file with short durations: figures are
for comparison, not for submission. The model defaults to configs/demo.toml;
``--random-weights`` runs it untrained (said in the results), and a missing
checkpoint is an error, never a silent switch to random weights.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.model_config import PRECISIONS  # noqa: E402
from harness.settings.config import Config, load_config  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEMO_CONFIG = ROOT / "configs" / "demo.toml"


def add_flags(p: argparse.ArgumentParser, seconds: float = 8.0, images: int = 64) -> None:
    """The flags every model benchmark takes (model, device, data size, run length)."""
    p.add_argument("--config", default=str(DEMO_CONFIG), help="model config TOML (default configs/demo.toml)")
    p.add_argument("--precision", choices=PRECISIONS, help="override the config's precision")
    p.add_argument("--backbone", choices=("resnet34", "resnet18"))
    p.add_argument("--num-classes", type=int)
    p.add_argument("--image-size", type=int, nargs=2, metavar=("S0", "S1"))
    p.add_argument("--dboxes-scale", type=float)
    p.add_argument("--random-weights", action="store_true",
                   help="ignore the config's checkpoint and run on seeded random weights")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the network")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--images", type=int, default=images, help="synthetic images in the data set")
    p.add_argument("--seconds", type=float, default=seconds, help="length of each timed run (bare and LoadGen)")
    p.add_argument("--repeats", type=int, default=3, help="bare/LoadGen pairs, alternated")
    p.add_argument("--suffix", default="", help="results go to benchmarks/results/<name><suffix>.{json,md}")


def resolve_config(args: argparse.Namespace, out_dir: Path, conf: Path) -> tuple[Config, str]:
    """The run config from the flags, and a note on the weights used."""
    model = {"precision": args.precision, "backbone": args.backbone, "num_classes": args.num_classes,
             "image_size": args.image_size, "dboxes_scale": args.dboxes_scale, "compile": args.compile}
    run = {"device": args.device, "threads": args.threads, "batch_size": args.batch_size,
           "server_max_batch": args.batch_size, "user_conf": str(conf), "output_dir": str(out_dir)}
    cfg = load_config(args.config, {"model": model, "run": run})
    ckpt = cfg.model.checkpoint
    if args.random_weights:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=None, random_weights=True))
        return cfg, "random weights (--random-weights): many more boxes reach NMS than with a trained model"
    if not ckpt or not Path(ckpt).is_file():
        raise SystemExit(f"error: {args.config} names no checkpoint that exists ({ckpt}): fix it, or pass "
                         "--random-weights to measure on untrained weights")
    return cfg, f"weights {Path(ckpt).name}"


def with_run(cfg: Config, **run: Any) -> Config:
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, **run))


def build_backend(cfg: Config, batch_sizes: Sequence[int]):
    """The PyTorch backend for ``cfg``, loaded and warmed up on ``batch_sizes`` (compile time measured)."""
    from backends.pytorch.backend import PyTorchBackend
    backend = PyTorchBackend(cfg.model, device=cfg.run.device, threads=cfg.run.threads,
                             trust_pickle=cfg.model.trust_pickle)
    backend.load()
    backend.warmup(tuple(sorted(set(batch_sizes))))
    return backend


def warm_offline_query(cfg: Config, backend: Any, expected_qps: float) -> None:
    """Before an Offline run at ``expected_qps``: with CUDA graphs, capture the batch shapes of the query
    LoadGen will issue (its remainder batch included), as the harness's own warm-up does."""
    runners = getattr(backend, "graph_runners", None)
    if runners is None or not runners():
        return
    from harness.run.backend import offline_query_sizes, warmup_batch_sizes
    run_cfg = with_run(cfg, scenario="Offline", mode="performance", offline_expected_qps=expected_qps)
    backend.warmup(warmup_batch_sizes(run_cfg, True, offline_query_sizes(run_cfg)))


def eager_calls(backend: Any) -> dict[str, int]:
    """Calls that found no CUDA graph after warm-up, by input shape, over every worker (empty without graphs)."""
    out: dict[str, int] = {}
    for runner in getattr(backend, "graph_runners", lambda: [])():
        for shape, n in runner.eager_calls.items():
            out[str(list(shape))] = out.get(str(list(shape)), 0) + n
    return out


def make_dataset(tmp: Path, num_images: int, sizes: Sequence[int], pin_memory: bool = False):
    """The held-out synthetic set (seed 0) in ``tmp``, cached at ``sizes``, all of it one LoadGen sample set."""
    from harness.run.dataset import Dataset
    from qsl.coco_qsl import CocoQSL
    from qsl.cache.prepare import ensure_cache
    from qsl.synthetic.dataset import make_synthetic_coco

    ann = make_synthetic_coco(tmp / "data", num_images, seed=0)
    cache = ensure_cache(tmp / "data", sizes, tmp / "cache", progress=False)
    return Dataset(qsl=CocoQSL(cache, perf_count=num_images, pin_memory=pin_memory), annotation_file=ann)


def write_conf(path: Path, seconds: float, min_queries: int = 1, latency_ms: float = 100.0) -> Path:
    """A short LoadGen settings file: every scenario runs ``seconds`` and at least ``min_queries`` queries."""
    path.write_text(
        "ssd-resnet34.*.performance_sample_count_override = 0\n"
        f"ssd-resnet34.*.min_duration = {int(seconds * 1000)}\n"
        f"ssd-resnet34.*.min_query_count = {min_queries}\n"
        "ssd-resnet34.SingleStream.target_latency_percentile = 90\n"
        f"ssd-resnet34.Server.target_latency = {math.ceil(latency_ms)}\n"   # whole ms, as LoadGen reads it
        "ssd-resnet34.Server.target_latency_percentile = 99\n"
        "ssd-resnet34.MultiStream.samples_per_query = 8\n")
    return path


def loadgen_run(cfg: Config, backend: Any, dataset: Any, out: Path, scenario: str, mode: str = "performance",
                **run: Any):
    """One LoadGen run (harness.run.loadgen_run.run_loadgen) of ``scenario``; returns its LoadGenRun."""
    from harness.run.loadgen_run import run_loadgen
    cfg = with_run(cfg, scenario=scenario, mode=mode, **run)
    return run_loadgen(cfg, mode, backend, dataset, out / f"{scenario}-{time.monotonic_ns()}")


def preload_batches(dataset: Any, backend: Any, batch_size: int) -> list:
    """Every sample loaded into the QSL, gathered into fixed batches ({S: uint8 [B,3,S,S]}, hw [B, 2])."""
    qsl = dataset.qsl
    qsl.load(range(qsl.total_count))
    return [qsl.get_batch(list(range(i, min(i + batch_size, qsl.total_count))))
            for i in range(0, qsl.total_count, batch_size)]


def in_thread(fn, *args):
    """``fn(*args)`` run on a fresh thread, as the harness's compute thread runs ``predict``.

    Measured on the 2-core machine here, torch CPU inference called from the main thread was
    3-5x slower than the same calls from another thread; the bare side must not pay that.
    """
    out: list = []
    errors: list = []

    def target() -> None:
        try:
            out.append(fn(*args))
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    t = threading.Thread(target=target, name="bare")
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return out[0]


def sync(backend: Any) -> None:
    """Wait for every worker's device (CUDA); nothing on a CPU."""
    from harness.sut.pipeline import backend_workers
    for worker in backend_workers(backend):
        if str(getattr(worker, "device", "cpu")).startswith("cuda"):
            torch.cuda.synchronize(worker.device)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank: the value at rank ceil(q/100 * n) of the sorted list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, -(-int(q * len(s)) // 100) - 1))
    return s[k]


def device_name(backend: Any) -> str:
    dev = getattr(backend, "device", torch.device("cpu"))
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return cpu_name()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(backend: Any = None) -> str:
    where = device_name(backend) if backend is not None else cpu_name()
    return (f"{where}; {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}")


def command() -> str:
    return ".venv/bin/python " + " ".join([str(Path(sys.argv[0]).relative_to(ROOT))
                                           if Path(sys.argv[0]).is_absolute() else sys.argv[0], *sys.argv[1:]])


def save(name: str, doc: dict, table: list[str]) -> None:
    """benchmarks/results/<name>.json (everything) and <name>.md (header + ``table`` lines)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    head = [f"# {doc['benchmark']}", "", f"`{doc['command']}`", "", f"{doc['date']}, {doc['machine']}."]
    if "model" in doc:
        head.append(f"Model: {doc['model']}; {doc['weights']}.")
    if "setup" in doc:   # the simulated-device benchmarks: no model
        head.append(f"Setup: {doc['setup']}.")
    head.append("")
    (RESULTS / f"{name}.md").write_text("\n".join(head + table) + "\n")


def date() -> str:
    return time.strftime("%Y-%m-%d %H:%M %Z")


def header(cfg: Config, backend: Any, note: str) -> dict:
    m = cfg.model
    model = (f"SSD-{m.backbone} {m.num_classes - 1} classes, {m.image_size[0]}/{m.image_size[1]}, {m.precision}"
             f"{', channels_last' if m.channels_last else ''}{', compiled' if m.compile else ''}")
    return {"date": date(), "machine": machine(backend), "command": command(),
            "model": model, "weights": note, "config": cfg.to_dict()}
