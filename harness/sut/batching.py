"""Batch sources the pipeline's workers pull from.

- :class:`BatchQueue`: batches formed by the SUT at issue time (the Offline
  query is cut into fixed-size batches), handed over first in, first out.
- :class:`DynamicBatcher`: Server samples arrive one query at a time (Poisson);
  a batch leaves when it holds ``max_batch`` samples, when its oldest sample
  has waited ``max_wait_s``, or at once after a flush.

Both are thread-safe: LoadGen's issue thread adds, the pipeline's loaders take
(``next_batch(worker)``, one loader per worker). A batch a worker could not
compute (the worker was lost) comes back through ``requeue`` and is handed out
before anything else; ``set_live`` names the workers still running, and a
retired worker's loader gets None at once, so it stops taking batches.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from harness.sut.completion import Sample


@dataclass
class Batch:
    """Samples that leave a source together, to be computed as one batch by one worker."""

    samples: list[Sample]
    closed_at: float = field(default_factory=time.monotonic)  # when it left the source
    requeued: bool = False             # handed back after a worker could not compute it


class _Source:
    """What both sources share: the condition, closing, the live workers and the handed-back batches."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._closed = False
        self._live: frozenset[int] | None = None   # None: every worker
        self._requeued: collections.deque[Batch] = collections.deque()

    def requeue(self, batch: Batch) -> None:
        """Hand ``batch`` back for another worker; it goes out before any other batch."""
        with self._cond:
            batch.requeued = True
            self._requeued.append(batch)
            self._cond.notify_all()

    def set_live(self, workers: Iterable[int]) -> None:
        """The workers still running; any other worker's ``next_batch`` returns None from now on."""
        with self._cond:
            self._live = frozenset(workers)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _retired(self, worker: int) -> bool:
        return self._live is not None and worker not in self._live

    def _take_requeued(self) -> Batch | None:
        """A handed-back batch, reopened now (caller holds the condition)."""
        if not self._requeued:
            return None
        batch = self._requeued.popleft()
        batch.closed_at = time.monotonic()
        return batch


class BatchQueue(_Source):
    """FIFO of ready-made batches."""

    def __init__(self) -> None:
        super().__init__()
        self._batches: collections.deque[list[Sample]] = collections.deque()

    def put(self, batches: Sequence[list[Sample]]) -> None:
        with self._cond:
            self._batches.extend(batches)
            # Every waiting loader may take one: waking a single one left the other workers asleep for the
            # whole Offline query (its loader never waits again while batches are queued).
            self._cond.notify_all()

    def next_batch(self, worker: int = 0) -> Batch | None:
        """Block until a batch is ready; None once the queue is closed and empty, or ``worker`` is retired."""
        with self._cond:
            while True:
                if self._retired(worker):
                    return None
                again = self._take_requeued()
                if again is not None:
                    return again
                if self._batches:
                    return Batch(self._batches.popleft())
                if self._closed:
                    return None
                self._cond.wait()


class DynamicBatcher(_Source):
    """Collects single samples into batches of at most ``max_batch``, waiting at most ``max_wait_s``."""

    def __init__(self, max_batch: int, max_wait_s: float) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"need max_batch >= 1 and max_wait_s >= 0, got {max_batch}, {max_wait_s}")
        super().__init__()
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._pending: collections.deque[tuple[float, Sample]] = collections.deque()
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

    def next_batch(self, worker: int = 0) -> Batch | None:
        """Block until a batch closes; None once closed and empty, or when ``worker`` is retired.

        Every wake-up checks again from the start: another loader may have taken the pending samples.
        """
        with self._cond:
            while True:
                if self._retired(worker):
                    return None
                again = self._take_requeued()
                if again is not None:
                    return again
                if not self._pending:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                remaining = self._pending[0][0] + self.max_wait_s - time.monotonic()
                if len(self._pending) >= self.max_batch or self._flush or self._closed or remaining <= 0:
                    return Batch(self._take(min(self.max_batch, len(self._pending))))
                self._cond.wait(remaining)

    def _take(self, n: int) -> list[Sample]:
        batch = [self._pending.popleft()[1] for _ in range(n)]
        if not self._pending:
            self._flush = False
        return batch
