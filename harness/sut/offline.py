"""Offline: one huge query, cut into batches of ``batch_size`` that keep the device busy.

All batches are queued at issue time; the pipeline's loader gathers the next
batch and its completer packs the previous one while the backend computes.
"""
from __future__ import annotations

from harness.sut.base import BaseSUT
from harness.sut.batching import BatchQueue


class OfflineSUT(BaseSUT):
    scenario = "Offline"
    threaded = True

    def __init__(self, backend, qsl, batch_size: int, completer=None, deadline_s: float | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        super().__init__(backend, qsl, BatchQueue(batch_size), completer, max_batch=batch_size,
                         deadline_s=deadline_s)
