"""SingleStream and MultiStream: each query is one batch, answered as soon as possible.

LoadGen issues the next query only after the previous one completed, so
nothing can overlap: one worker thread loads, predicts and completes each
query (a SingleStream query is one sample, a MultiStream query
``samples_per_query`` samples run as one batch). Latency is the figure of merit.
"""
from __future__ import annotations

from harness.batching import BatchQueue
from harness.completion import Sample
from harness.sut_base import BaseSUT


class StreamSUT(BaseSUT):
    threaded = False

    def __init__(self, backend, qsl, scenario: str = "SingleStream", completer=None) -> None:
        self.scenario = scenario
        super().__init__(backend, qsl, BatchQueue(), completer)

    def _enqueue(self, samples: list[Sample]) -> None:
        self.source.put([samples])
