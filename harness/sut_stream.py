"""SingleStream and MultiStream: each query is one batch, answered as soon as possible.

LoadGen issues the next query only after the previous one completed, so
nothing can overlap: one worker thread loads, predicts and completes each
query (a SingleStream query is one sample, a MultiStream query
``samples_per_query`` samples run as one batch). Latency is the figure of merit.

The handoff from LoadGen's issue thread to the worker is on the critical path
of every query, so it is a ``queue.SimpleQueue`` (a C lock, no Python-level
condition variable): measured here, a thread round trip costs 16 us through it
against 25 us through the Condition-based ``BatchQueue``.
"""
from __future__ import annotations

import queue

from harness.completion import Sample
from harness.sut_base import BaseSUT


class QueryQueue:
    """FIFO of ready-made batches (the pipeline's batch source), one per query."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue = queue.SimpleQueue()

    def put(self, batches: list[list[Sample]]) -> None:
        for batch in batches:
            self._q.put(batch)

    def next_batch(self) -> list[Sample] | None:
        """Block until a batch is ready; None once closed and drained (and on every later call)."""
        batch = self._q.get()
        if batch is None:
            self._q.put(None)   # leave the end mark for any later caller
        return batch

    def close(self) -> None:
        """Batches already queued are still handed out, then None."""
        self._q.put(None)


class StreamSUT(BaseSUT):
    threaded = False

    def __init__(self, backend, qsl, scenario: str = "SingleStream", completer=None) -> None:
        self.scenario = scenario
        super().__init__(backend, qsl, QueryQueue(), completer)

    def _enqueue(self, samples: list[Sample]) -> None:
        self.source.put([samples])
