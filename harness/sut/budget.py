"""Server's latency budget: how big a batch may be and how long it may wait, counting every wait.

LoadGen's Server bound (100 ms at p99 for SSD-ResNet34) covers a sample from
its issue to its completion. A sample spends that time in two places: in
the batcher until its batch closes (its age), then from the close to its
completion (the batch's service time, below), which includes any wait for a
worker or the device. :class:`LatencyBudget` chooses against the bound:

- the batch size: at most the largest ``b`` whose service time fits twice in
  the budget, because a sample that just missed a batch waits for a worker to
  finish one batch and then for its own (batches close only when a worker can
  take them, so no more than that is queued ahead of it). When not even one
  sample fits (a slow device, or batches the host delayed), smaller batches
  would only lower the throughput that drains the queue: then the largest;
- the wait: the oldest pending sample's batch closes when the batch is full or
  when waiting longer would leave less than its service time before the
  budget ends (never later than ``max_wait_s``, the configured wait).

The budget is ``BUDGET_SHARE`` of the bound: the rest is for what the harness
cannot time (LoadGen's issue delay, thread wake-ups on a loaded host).

How long a Server batch takes from closing to completion is learnt from the
batches of this run.

A batch's service time is measured from the moment it leaves the batcher to
the moment its samples are completed: the host gather, any wait for the
device (a second worker's batch queued behind the first), the compute and the
completion. Everything a closed batch waits for is in it, so a bound checked
against it counts every wait after the close; the time before the close is
the samples' own age, which the batcher adds.

Model: ``time(b) = a + c * b`` for a batch of ``b`` samples, fitted by least
squares with exponential forgetting (recent batches count most: a device
slows down when it warms up or when another job shares the host), plus a
margin of twice the recent mean lateness (how much batches took longer than
the fit). A batch counts as at most twice the fitted time, so one batch the
host stalled cannot shrink the batches for long, while a device that really
slows down is followed within a few batches. With too few batches, or all
of one size, the estimate is flat in the batch size: an optimistic guess
that the next larger batch corrects. A pessimistic one would lock itself in:
small batches, so no evidence that larger ones fit, so small batches, a
backlog that only grows.
"""
from __future__ import annotations

import threading

BUDGET_SHARE = 0.9     # share of LoadGen's latency bound the batcher plans with
FORGET = 0.97          # weight kept by earlier batches at each new one (a memory of about 30 batches)
MIN_BATCHES = 3        # batches seen before any estimate is given
JITTER_MARGIN = 2.0    # mean lateness (positive residuals) added to the fitted time


class ServiceTime:
    """Thread-safe online estimate of a batch's service time in seconds, by batch size."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n = 0
        self._w = self._sb = self._sbb = self._st = self._sbt = 0.0   # weighted sums of 1, b, b^2, t, b*t
        self._spread = 0.0                                              # mean lateness

    def observe(self, size: int, seconds: float) -> None:
        """A batch of ``size`` samples took ``seconds`` from closing to completion."""
        with self._lock:
            if self._n >= MIN_BATCHES:
                fit = self._fit(size)
                seconds = min(seconds, 2 * fit) if fit > 0 else seconds   # a stalled batch counts as 2x
                late = max(seconds - fit, 0.0)
                self._spread = FORGET * self._spread + (1 - FORGET) * late
            f = FORGET
            self._w = f * self._w + 1.0
            self._sb = f * self._sb + size
            self._sbb = f * self._sbb + size * size
            self._st = f * self._st + seconds
            self._sbt = f * self._sbt + size * seconds
            self._n += 1

    def estimate(self, size: int) -> float | None:
        """The expected service time of a batch of ``size`` with its margin, or None before MIN_BATCHES."""
        with self._lock:
            if self._n < MIN_BATCHES:
                return None
            return self._fit(size) + JITTER_MARGIN * self._spread

    @property
    def batches(self) -> int:
        return self._n

    def _fit(self, size: int) -> float:
        mean_b, mean_t = self._sb / self._w, self._st / self._w
        var_b = self._sbb / self._w - mean_b * mean_b
        if var_b < 0.25:   # (nearly) one batch size so far: no slope to fit, assume none
            return mean_t
        slope = max(0.0, (self._sbt / self._w - mean_b * mean_t) / var_b)
        return max(0.0, mean_t + slope * (size - mean_b))


class LatencyBudget:
    """Batch size and wait for a Server batcher, from LoadGen's latency bound and the measured service times."""

    def __init__(self, max_batch: int, max_wait_s: float, bound_s: float | None,
                 service: ServiceTime | None = None) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.budget_s = None if bound_s is None else BUDGET_SHARE * bound_s
        self.service = service or ServiceTime()

    def cap(self) -> int:
        """The largest batch whose service time fits twice in the budget; max_batch when none or all do."""
        largest = None if self.budget_s is None else self.service.estimate(self.max_batch)
        if largest is None:
            return self.max_batch
        def fits(b: int) -> bool:   # monotone in b: the fitted slope is never negative
            return 2 * self.service.estimate(b) <= self.budget_s

        if 2 * largest <= self.budget_s or not fits(1):   # no size keeps the bound: throughput drains the backlog
            return self.max_batch
        lo, hi = 1, self.max_batch          # largest b with fits(b): bisection, fits(lo), not fits(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo

    def wait_s(self, size: int) -> float:
        """How long the oldest pending sample may wait for a batch of ``size`` to fill, from its arrival."""
        if self.budget_s is None:
            return self.max_wait_s
        est = self.service.estimate(size)
        room = self.budget_s / 2 if est is None else self.budget_s - est   # nothing measured yet: half
        return max(0.0, min(self.max_wait_s, room))
