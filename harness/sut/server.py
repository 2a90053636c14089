"""Server: Poisson arrivals, dynamically batched under a latency bound.

Samples wait in a :class:`DynamicBatcher` until ``max_batch`` are there or the
oldest has waited ``max_wait_s``. The wait is the configured one, capped at
``WAIT_FRACTION`` of LoadGen's latency bound so batching can never spend most
of a sample's budget (the rest is left for queueing and compute). A flush
sends what is pending at once.
"""
from __future__ import annotations

from harness.sut.base import BaseSUT
from harness.sut.batching import DynamicBatcher
from harness.sut.completion import Sample

WAIT_FRACTION = 0.2


def server_max_wait_s(configured_ms: float, target_latency_ns: int) -> float:
    """The batcher's longest wait in seconds: ``min(configured, WAIT_FRACTION * bound)``."""
    return min(configured_ms / 1e3, WAIT_FRACTION * target_latency_ns / 1e9)


class ServerSUT(BaseSUT):
    scenario = "Server"
    threaded = True

    def __init__(self, backend, qsl, max_batch: int, max_wait_s: float, completer=None) -> None:
        super().__init__(backend, qsl, DynamicBatcher(max_batch, max_wait_s), completer)

    def _enqueue(self, samples: list[Sample]) -> None:
        self.source.add(samples)

    def flush_queries(self) -> None:
        self.source.flush()
