"""Batch sources the pipeline's first stage pulls from.

- :class:`BatchQueue`: batches formed by the SUT at issue time (a SingleStream
  or MultiStream query is one batch; the Offline query is cut into fixed-size
  batches), handed over first in, first out.
- :class:`DynamicBatcher`: Server samples arrive one query at a time (Poisson);
  a batch leaves when it holds ``max_batch`` samples, when its oldest sample
  has waited ``max_wait_s``, or at once after a flush.

Both are thread-safe: LoadGen's issue thread adds, the pipeline's loader takes.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Sequence

from harness.sut.completion import Sample


class BatchQueue:
    """FIFO of ready-made batches."""

    def __init__(self) -> None:
        self._batches: collections.deque[list[Sample]] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, batches: Sequence[list[Sample]]) -> None:
        with self._cond:
            self._batches.extend(batches)
            # Every waiting loader may take one: waking a single one left the other workers asleep for the
            # whole Offline query (its loader never waits again while batches are queued).
            self._cond.notify_all()

    def next_batch(self) -> list[Sample] | None:
        with self._cond:
            while not self._batches and not self._closed:
                self._cond.wait()
            return self._batches.popleft() if self._batches else None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class DynamicBatcher:
    """Collects single samples into batches of at most ``max_batch``, waiting at most ``max_wait_s``."""

    def __init__(self, max_batch: int, max_wait_s: float) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"need max_batch >= 1 and max_wait_s >= 0, got {max_batch}, {max_wait_s}")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._pending: collections.deque[tuple[float, Sample]] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._flush = False

    def add(self, samples: Sequence[Sample]) -> None:
        now = time.monotonic()
        with self._cond:
            self._pending.extend((now, s) for s in samples)
            self._cond.notify()

    def flush(self) -> None:
        """No more samples are coming soon: stop waiting for batches to fill."""
        with self._cond:
            self._flush = True
            self._cond.notify()

    def next_batch(self) -> list[Sample] | None:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if not self._pending:
                return None
            deadline = self._pending[0][0] + self.max_wait_s
            while len(self._pending) < self.max_batch and not (self._flush or self._closed):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            n = min(self.max_batch, len(self._pending))
            batch = [self._pending.popleft()[1] for _ in range(n)]
            if not self._pending:
                self._flush = False
            return batch

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
