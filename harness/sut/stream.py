"""SingleStream and MultiStream: each query is one batch, answered before ``IssueQuery`` returns.

LoadGen issues the next query only after the previous one completed, so
nothing can overlap: the query's samples (one for SingleStream,
``samples_per_query`` for MultiStream, run as one batch) are loaded, predicted
and completed right on LoadGen's issue thread, through the pipeline's
``run_inline``. A handoff to a worker thread would be on the critical path of
every query: measured here with the null backend, 86 us per SingleStream query
through a worker thread against 28 us inline (``benchmarks/bench_harness.py``).
A backend that fails or dies still completes every sample (see
``Pipeline.run_inline``), so LoadGen never waits. A ``predict`` past the
deadline holds LoadGen's own thread, so it cannot be worked around: every
sample completes at once and the run ends as with a dead worker (exit 1).
"""
from __future__ import annotations

from harness.sut.base import BaseSUT
from harness.sut.completion import Sample


class StreamSUT(BaseSUT):
    threaded = False

    def __init__(self, backend, qsl, scenario: str = "SingleStream", completer=None,
                 deadline_s: float | None = None) -> None:
        self.scenario = scenario
        super().__init__(backend, qsl, None, completer, deadline_s=deadline_s)

    def _enqueue(self, samples: list[Sample]) -> None:
        self.pipeline.run_inline(samples)
