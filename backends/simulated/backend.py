"""A simulated accelerator: no model, devices that hold each batch for a known time.

A measuring instrument for the harness, not a model: it answers "does the
harness keep N devices of this speed busy, and Server queries inside the
bound?" on any machine, with no GPU. Its detections are not a model's.

- Each of ``devices`` devices holds a batch of ``b`` samples for
  ``timing.fixed_ms + timing.per_sample_ms * b`` milliseconds
  (backends/simulated/profiles.py). A device runs one batch at a time, on its own
  timeline: a batch handed to a busy device starts when the one before it
  ends, as kernels queued on a CUDA stream do, and the calling worker sleeps
  until its batch's end (the GIL is free meanwhile). A late wake-up of the
  worker on a loaded host therefore does not slow the device down; only a
  batch handed over late leaves it idle, which is the harness's doing.
- Each device is served like a GPU on the CUDA path: ``WORKERS_PER_DEVICE``
  workers share it, so one worker's gather and completion overlap another's
  batch on the device (``workers()``, one pipeline worker each).
- Detections are deterministic per sample and independent of the batch: they
  are a function of the sample's pixels and original size only (a seed from
  a strided subsample, then numpy's PCG64), so accuracy runs complete and
  TEST01 finds the same bytes for a sample in every run. They score about
  zero mAP. Each sample's are made once and cached, so making them costs the
  host next to nothing: the host time measured is the harness's.
- ``lose()`` on a device makes its workers raise WorkerLost (tests, drills).
"""
from __future__ import annotations

import threading
import time
from typing import Mapping

import numpy as np
import torch

from backends.base import CUDA_WORKERS_PER_GPU, WorkerLost, check_sizes
from backends.model_config import ModelConfig
from backends.simulated.profiles import DeviceTiming, SimSettings

WORKERS_PER_DEVICE = CUDA_WORKERS_PER_GPU   # each device is served as the CUDA path serves a GPU
DETECTIONS = 100         # per image: of the order a trained SSD returns after NMS (at most 200)
CACHED_SAMPLES = 4096     # detections kept per backend, by seed (LoadGen's sample set is far smaller)


class SimulatedDevice:
    """One device: one batch at a time, each for ``timing.batch_s(b)``, on the device's own timeline."""

    def __init__(self, index: int, timing: DeviceTiming) -> None:
        self.index = index
        self.timing = timing
        self.lost = False
        self.busy_s = 0.0          # device time of every batch it ran
        self.batches = 0
        self.samples = 0
        self._free_at = 0.0        # time.monotonic() when its last queued batch ends
        self._lock = threading.Lock()

    def run(self, batch: int) -> None:
        """Queue a batch of ``batch`` samples and return when the device has finished it."""
        with self._lock:
            if self.lost:
                raise WorkerLost(f"simulated device {self.index} was lost")
            start = max(time.monotonic(), self._free_at)
            self._free_at = end = start + self.timing.batch_s(batch)
            self.busy_s += end - start
            self.batches += 1
            self.samples += batch
        delay = end - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def lose(self) -> None:
        """From now on every batch given to this device raises WorkerLost."""
        with self._lock:
            self.lost = True


def sample_seeds(images: torch.Tensor, image_hw: torch.Tensor) -> list[int]:
    """One integer per image from its pixels and original size alone (a strided subsample, weighted).

    Args:
        images: uint8 Tensor[B, 3, S, S] (any one of the sample's input sizes).
        image_hw: Tensor[B, 2] original (height, width).
    """
    b, size = images.shape[0], images.shape[-1]
    step = max(1, size // 16)
    pixels = images.cpu().numpy()[:, :, ::step, ::step].reshape(b, -1).astype(np.int64)
    weights = np.arange(1, pixels.shape[1] + 1, dtype=np.int64)
    hw = image_hw.cpu().numpy().astype(np.int64)
    return ((pixels * weights).sum(1) * 1_000_003 + hw[:, 0] * 7919 + hw[:, 1]).tolist()


def seed_detections(seed: int, k: int, num_classes: int) -> torch.Tensor:
    """``k`` made-up detections for ``seed``: fp32 Tensor[k, 6] (x1, y1, x2, y2, score, label).

    Box xyxy inside [0, 1], label 1..num_classes-1, rows by decreasing score. numpy's PCG64 generator gives
    the same numbers for the same seed on every machine and numpy version that has it.
    """
    u = np.random.Generator(np.random.PCG64(seed & (2**63 - 1))).random((k, 5), dtype=np.float32)
    half = 0.02 + 0.2 * u[:, 2:4]
    boxes = np.clip(np.concatenate([u[:, :2] - half, u[:, :2] + half], axis=1), 0.0, 1.0)
    score = np.sort(0.05 + 0.9 * u[:, 4])[::-1]
    label = 1 + (np.arange(k) * 7 + seed) % (num_classes - 1)
    return torch.from_numpy(np.column_stack([boxes, score, label]).astype(np.float32))


class SimulatedBackend:
    """The backend interface of ``backends/base.py`` over simulated devices; this object is worker 0."""

    name = "simulated"
    simulated = True   # no detector: a measuring instrument for the harness

    def __init__(self, model_cfg: ModelConfig, settings: SimSettings, detections: int = DETECTIONS) -> None:
        if settings.devices < 1:
            raise ValueError(f"need at least one simulated device, got {settings.devices}")
        self.sizes: tuple[int, ...] = model_cfg.sizes
        self.num_classes = model_cfg.num_classes
        self.settings = settings
        self.detections = detections
        self.device = "cpu"          # inputs stay in host memory: nothing to pin or copy
        self.threads = 0
        self.devices = [SimulatedDevice(i, settings.timing) for i in range(settings.devices)]
        self._cache: dict[int, torch.Tensor] = {}
        self.sim_device = self.devices[0]
        self.device_id = "sim:0"     # the device this worker computes on (backends/base.py: device_of)
        self._workers = [self] + [self._worker_on(d) for d in self.devices for slot in range(WORKERS_PER_DEVICE)
                                  if (d.index, slot) != (0, 0)]

    def _worker_on(self, device: SimulatedDevice) -> "SimulatedBackend":
        worker = object.__new__(SimulatedBackend)
        worker.__dict__.update(self.__dict__)
        worker.sim_device = device
        worker.device_id = f"sim:{device.index}"
        worker._workers = []
        return worker

    @property
    def description(self) -> str:
        s = self.settings
        return (f"simulated accelerator, not a model: {s.devices} device(s) x {WORKERS_PER_DEVICE} workers, "
                f"{s.timing.describe()}")

    def workers(self) -> list["SimulatedBackend"]:
        """Every worker: this one first, then the other worker of device 0, then those of devices 1, 2, ..."""
        return list(self._workers)

    def load(self) -> None:
        pass

    def warmup(self, batch_sizes: tuple[int, ...] | None = None) -> None:
        pass

    def predict(self, images: Mapping[int, torch.Tensor], image_hw: torch.Tensor) -> list[torch.Tensor]:
        """Hold the batch on this worker's device, then return each image's detections (fp32 Tensor[K, 6])."""
        check_sizes(images, self.sizes)
        seeds = sample_seeds(images[self.sizes[0]], image_hw)
        self.sim_device.run(len(seeds))
        return [self._detections(seed) for seed in seeds]

    def _detections(self, seed: int) -> torch.Tensor:
        """The sample's detections, made once: the workers share the cache (a dict: safe under the GIL)."""
        dets = self._cache.get(seed)
        if dets is None:
            dets = seed_detections(seed, self.detections, self.num_classes)
            if len(self._cache) < CACHED_SAMPLES:
                self._cache[seed] = dets
        return dets
