"""A backend that does no inference: fixed detections, returned at once.

It measures what the harness itself costs (LoadGen, queues, threads, records)
and drives harness tests. Same interface as ``PyTorchBackend`` (see
``backends/base.py``). Every image gets the same ``num_detections`` boxes, a
diagonal of small xyxy boxes normalized to [0, 1] with falling scores and
labels cycling through 1..num_classes-1; ``latency_ms`` adds a sleep per
batch to mimic a device with a known speed.
"""
from __future__ import annotations

import time
from typing import Mapping

import torch

from backends.model_config import ModelConfig


class NullBackend:
    name = "null"
    simulated = True   # no detector: a measuring instrument for the harness

    def __init__(self, model_cfg: ModelConfig | None = None, device: str = "cpu", threads: int = 0,
                 num_detections: int = 2, latency_ms: float = 0.0) -> None:
        cfg = model_cfg or ModelConfig()
        self.sizes = cfg.sizes
        self.device = "cpu"
        self.num_classes = cfg.num_classes
        self.latency_s = latency_ms / 1e3
        self.detections = self.fixed_detections(num_detections, cfg.num_classes)
        self.calls = 0

    @staticmethod
    def fixed_detections(k: int, num_classes: int = 81) -> torch.Tensor:
        """Tensor[k, 6] (x1, y1, x2, y2, score, label): box j spans [0.1j, 0.1j + 0.2] (mod 0.8) on both axes."""
        j = torch.arange(k, dtype=torch.float32)
        lo = (0.1 * j) % 0.8
        score = 0.9 - 0.8 * j / max(k, 1)
        label = (j % (num_classes - 1)) + 1
        return torch.stack([lo, lo, lo + 0.2, lo + 0.2, score, label], dim=1)

    def load(self) -> None:
        pass

    def warmup(self) -> None:
        pass

    def predict(self, images: Mapping[int, torch.Tensor], image_hw: torch.Tensor) -> list[torch.Tensor]:
        """One copy of the fixed detections per image: list of Tensor[K, 6], fp32, CPU."""
        self.calls += 1
        if self.latency_s:
            time.sleep(self.latency_s)
        return [self.detections] * int(image_hw.shape[0])
