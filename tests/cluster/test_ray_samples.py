"""Loaded sample sets travel once, batches as rows: an accuracy run through Ray workers on two nodes.

Each set LoadGen loads goes into the object store once and every worker holds it before LoadGen
issues from it; a batch then sends its rows only, and the worker gathers those rows from its copy.
The workers echo a pixel of each image they get (test-made, shipped by value), so the accuracy log
shows that every sample was computed from its own image.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import torch

from backends.null import NullBackend
from harness.run.benchmark import run_benchmark
from harness.run.dataset import Dataset
from harness.settings.config import load_config
from qsl.memory_qsl import MemoryQSL
from tests.test_harness_scenarios import HINTS


class PixelEcho(NullBackend):
    """One detection per image whose x1 is the image's first pixel / 255 (MemoryQSL: sample i % 256)."""

    def predict(self, images, image_hw):
        first = images[self.sizes[0]][:, 0, 0, 0].float() / 255
        return [torch.tensor([[v, 0.0, 1.0, 1.0, 0.5, 1.0]]) for v in first.tolist()]


def pixel_echo(device, threads, weights):
    return PixelEcho()


def test_an_accuracy_run_sends_rows_not_pixels_and_each_worker_holds_each_set_once(ray_cluster, tmp_path,
                                                                                     fast_conf):
    import ray
    from ray import cloudpickle

    from backends.ray.backend import RayBackend
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    backend = RayBackend.start(pixel_echo, address=ray_cluster.address, device="cpu", workers=2)
    qsl = MemoryQSL(96, sizes=(300, 600), perf_count=64)   # LoadGen loads two sets: 64 samples, then 32
    config = load_config(None, {"run": {"scenario": "Offline", "mode": "accuracy", "user_conf": str(fast_conf),
                                        "output_dir": str(tmp_path / "out"), **HINTS}})
    try:
        (run,) = run_benchmark(config, backend, Dataset(qsl)).runs
        assert run.failures == [] and run.issued == 96
        log = json.loads((run.out_dir / "mlperf_log_accuracy.json").read_text())
        x1 = {e["qsl_idx"]: np.frombuffer(bytes.fromhex(e["data"]), np.float32)[2] for e in log}
        assert sorted(x1) == list(range(96)) and all(round(v * 255) == i % 256 for i, v in x1.items())
        # 8 rows and a few numbers per batch, against 8 x 3 x (300^2 + 600^2) = 10.8 MB of images.
        assert 0 < backend.payload_bytes() <= 1024
        assert sum(p.sent_batches for p in backend.workers()) >= 96 // config.run.batch_size
        # Two sets loaded, two handed over; every worker holds the last one only.
        assert qsl.load_calls == 2 and backend.sample_set[0] == 2
        assert [ray.get(s.control("ping"))["sets"] for s in backend.states] == [[2], [2]]
    finally:
        backend.close()
