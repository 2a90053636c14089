"""Server: Poisson arrivals, dynamically batched under LoadGen's latency bound.

Samples wait in a :class:`DynamicBatcher`. A batch closes only when a worker
is idle and asks for one (the pipeline runs Server with no batch loaded
ahead), so no closed batch queues behind another outside the latency budget:
under load a batch holds what arrived while the workers were busy, which
grows the batches exactly as far as the arrival rate needs. The batch size
and how long an idle worker waits for more samples are chosen against the
bound from the service times measured during the run, counting the samples'
age and every wait after the close (harness/sut/budget.py); the configured
``max_wait_s`` caps the wait. A flush sends what is pending at once.
"""
from __future__ import annotations

from harness.sut.base import BaseSUT
from harness.sut.batching import DynamicBatcher


class ServerSUT(BaseSUT):
    scenario = "Server"
    threaded = True
    ahead = 0   # a worker's next batch closes only once it is idle

    def __init__(self, backend, qsl, max_batch: int, max_wait_s: float, bound_s: float | None = None,
                 completer=None, deadline_s: float | None = None) -> None:
        super().__init__(backend, qsl, DynamicBatcher(max_batch, max_wait_s, bound_s), completer, max_batch=max_batch,
                         deadline_s=deadline_s)

    def flush_queries(self) -> None:
        self.source.flush()
