"""What the simulated-accelerator benchmarks share: flags, the devices, the data, the host's gather.

Assumptions: the devices are ``backends/simulated/backend.py`` devices (a measuring
instrument, not a model: each holds a batch for A + B x b ms), so every
figure measures the harness (LoadGen, batching, the workers' threads, the
host's gather of uint8 batches, records and completions) against devices of a
known speed. The data is an in-memory QSL (``qsl.memory_qsl``) of
``--images`` samples at ``--image-size``; it gathers with ``np.take`` exactly
as the COCO QSL does, so the host pays the gather a real run pays. Each
LoadGen run gets a fresh backend, so device timelines start idle.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from backends.simulated.profiles import PROFILES, DeviceTiming, SimSettings
from backends.simulated.backend import SimulatedBackend
from benchmarks import common
from harness.run.dataset import Dataset
from harness.settings.config import Config, load_config
from harness.sut.stages import BatchBuffers
from qsl.memory_qsl import MemoryQSL


def add_flags(p: argparse.ArgumentParser, seconds: float, image_size: tuple[int, int], profile: str | None,
              batch_ms: tuple[float, float] | None, batch: int = 32) -> None:
    p.add_argument("--sim-profile", choices=sorted(PROFILES),
                   help=f"device timing (default {profile or '--sim-batch-ms'})")
    p.add_argument("--sim-batch-ms", type=float, nargs=2, metavar=("A", "B"), default=batch_ms,
                   help=f"device timing A + B x batch ms, instead of a profile (default {batch_ms})")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("S0", "S1"), default=list(image_size),
                   help="sizes of the images the host gathers (equal = one size)")
    p.add_argument("--batch-size", type=int, default=batch, help="Offline batch (Server: most samples per batch)")
    p.add_argument("--images", type=int, default=64, help="samples in the QSL (all loaded)")
    p.add_argument("--seconds", type=float, default=seconds, help="LoadGen min_duration of each run")
    p.add_argument("--repeats", type=int, default=3, help="rounds, alternated")
    p.add_argument("--suffix", default="", help="results go to benchmarks/results/<name><suffix>.{json,md}")


def timing(args: argparse.Namespace, default_profile: str | None = None) -> DeviceTiming:
    """The profile when one is named, else --sim-batch-ms when given, else ``default_profile``."""
    if args.sim_profile is not None:
        return PROFILES[args.sim_profile]
    if args.sim_batch_ms is not None:
        return DeviceTiming(args.sim_batch_ms[0], args.sim_batch_ms[1], "--sim-batch-ms")
    return PROFILES[default_profile]


def config(args: argparse.Namespace, conf: Path, out: Path) -> Config:
    return load_config(None, {"model": {"image_size": args.image_size, "num_classes": 81},
                              "run": {"batch_size": args.batch_size, "server_max_batch": args.batch_size,
                                      "user_conf": str(conf), "output_dir": str(out)}})


def dataset(cfg: Config, images: int) -> Dataset:
    qsl = MemoryQSL(images, sizes=cfg.model.sizes)
    qsl.load(range(images))
    return Dataset(qsl)


def run(cfg: Config, devices: int, device_timing: DeviceTiming, data: Dataset, out: Path, scenario: str,
        **run_settings: Any):
    """One LoadGen run of ``scenario`` on ``devices`` fresh simulated devices; its LoadGenRun."""
    sim = SimulatedBackend(cfg.model, SimSettings(device_timing, devices))
    return common.loadgen_run(cfg, sim, data, out, scenario, **run_settings)


def gather_rate(data: Dataset, batch: int, seconds: float = 1.0, repeats: int = 3) -> float:
    """Samples/s one thread gathers from ``data``'s QSL in batches of ``batch`` into reused buffers
    (as the pipeline's loaders do); the median of ``repeats`` timings of ``seconds``."""
    qsl = data.qsl
    buffers = BatchBuffers(qsl.sizes)
    rows = [list(range(i, i + batch)) for i in range(0, qsl.total_count - batch + 1, batch)] or \
        [[i % qsl.total_count for i in range(batch)]]
    rates = []
    for _ in range(repeats):
        n, k, t0 = 0, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            qsl.get_batch(rows[k % len(rows)], out=buffers.take(batch))
            n, k = n + batch, k + 1
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def describe(args: argparse.Namespace, device_timing: DeviceTiming) -> str:
    sizes = "+".join(map(str, dict.fromkeys(args.image_size)))
    return (f"simulated devices (a measuring instrument, not a model), {device_timing.describe()}; "
            f"images gathered at {sizes}, {args.images} in the QSL; batch {args.batch_size}")
