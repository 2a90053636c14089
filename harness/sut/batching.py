"""Batch sources the pipeline's workers pull from.

- :class:`BatchQueue`: batches formed by the SUT at issue time (the Offline
  query is cut into fixed-size batches), handed over first in, first out.
- :class:`WorkLeft`: a stream query's work left, computed on LoadGen's thread
  (``Pipeline.run_inline``); a batch handed back joins it.
- :class:`DynamicBatcher`: Server samples arrive one query at a time (Poisson);
  a batch closes when a worker asks for one (the pipeline's Server loaders ask
  only when their worker is idle) and then holds what has arrived, up to the
  size the latency bound allows, waiting for more only as long as the oldest
  sample can still meet the bound and never longer than ``max_wait_s``
  (harness/sut/budget.py); at once after a flush.

Both are thread-safe: LoadGen's issue thread adds, the pipeline's loaders take
(``next_batch(worker)``, one loader per worker). A batch a worker could not
compute (the worker was lost, or the batch raised there) comes back through
``requeue`` and is handed out before anything else, to a worker it need not
avoid (one on a device it did not fail on) while such a worker runs. The
workers ``set_held`` names take only such batches for a while (their device
failed a batch and no other device has computed it yet). ``set_live`` names
the workers still running; a retired worker's loader gets None at once.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Protocol, Sequence

from harness.sut.budget import LatencyBudget
from harness.sut.completion import Sample


@dataclass
class Batch:
    """Samples that leave a source together, to be computed as one batch by one worker."""

    samples: list[Sample]
    closed_at: float = field(default_factory=time.monotonic)  # when it left the source; a requeued one is not timed
    requeued: bool = False             # handed back after a worker could not compute it
    failed_on: frozenset[str] = frozenset()   # the devices on which these samples, together, raised
    avoid: frozenset[int] = frozenset()       # the workers of those devices: others take it while any can
    sent_from: str | None = None       # the device that handed it on; it takes no fresh batch until this settles


class BatchSource(Protocol):
    def add(self, samples: Sequence[Sample]) -> None:
        """Take newly issued samples (the SUT's ``issue_queries``)."""

    def next_batch(self, worker: int = 0) -> Batch | None:
        """Block until a batch is ready for ``worker``; None once closed and empty, or the worker is retired."""

    def requeue(self, batch: Batch) -> bool:
        """Take back a batch a worker could not compute; it goes out first, to another worker. False when
        no worker that may take it is taking batches any more."""

    def set_live(self, workers: Iterable[int]) -> None:
        """The workers still running (by index)."""

    def set_held(self, workers: Iterable[int]) -> None:
        """The workers (by index) that take only handed-back batches for now."""

    def close(self) -> None:
        """Wake any waiter; after this ``next_batch`` drains what is left, then returns None."""

    def batch_done(self, size: int, seconds: float) -> None:
        """A batch from this source was completed ``seconds`` after it closed (Server learns from it)."""


class _Source:
    """What both sources share: the condition, closing, the live workers and the handed-back batches."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._closed = False
        self._live: frozenset[int] | None = None   # None: every worker
        self._finished: set[int] = set()              # workers whose next_batch returned None
        self._requeued: collections.deque[Batch] = collections.deque()
        self._held: frozenset[int] = frozenset()      # workers that take no fresh batch for now

    def requeue(self, batch: Batch) -> bool:
        """Hand ``batch`` back for another worker; it goes out before any other batch.

        False (and nothing queued) when no worker still taking batches could take it: the source is
        closed and drained, or only workers it is to avoid are left.
        """
        with self._cond:
            if self._live is not None and not self._takers(batch):
                return False
            batch.requeued = True
            self._requeued.append(batch)
            self._cond.notify_all()
            return True

    def _takers(self, batch: Batch) -> list[int]:
        """Live workers still taking batches that may take ``batch`` (caller holds the condition)."""
        return [w for w in self._live - self._finished if w not in batch.avoid]

    def set_live(self, workers: Iterable[int]) -> None:
        """The workers still running; any other worker's ``next_batch`` returns None from now on."""
        with self._cond:
            self._live = frozenset(workers)
            self._cond.notify_all()

    def set_held(self, workers: Iterable[int]) -> None:
        """The workers that take only handed-back batches for now (their device's failures are unconfirmed)."""
        with self._cond:
            self._held = frozenset(workers)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def batch_done(self, size: int, seconds: float) -> None:
        """A batch of ``size`` from this source was completed ``seconds`` after it closed."""

    def _retired(self, worker: int) -> bool:
        return self._live is not None and worker not in self._live

    def _answer_now(self, worker: int) -> tuple[bool, Batch | None]:
        """(True, what next_batch returns) for a retired worker (None) or a handed-back batch it may take;
        (False, None) otherwise (caller holds the condition)."""
        if self._retired(worker):
            self._none_for(worker)
            return True, None
        again = self._take_requeued(worker)
        return again is not None, again

    def _none_for(self, worker: int) -> None:
        """``worker``'s loader is told there is nothing more (caller holds the condition)."""
        self._finished.add(worker)

    def _take_requeued(self, worker: int) -> Batch | None:
        """A handed-back batch for ``worker``, taken off the queue (caller holds the condition).

        A batch that is to avoid ``worker`` goes to it only when no other live worker is taking batches.
        """
        for i, batch in enumerate(self._requeued):
            if worker not in batch.avoid or self._live is None or not self._takers(batch):
                del self._requeued[i]
                return batch
        return None


class BatchQueue(_Source):
    """FIFO of ready-made batches: an Offline query cut into batches of ``batch_size`` (``add``), or batches
    as given (``put``)."""

    def __init__(self, batch_size: int = 1) -> None:
        super().__init__()
        self.batch_size = batch_size
        self._batches: collections.deque[list[Sample]] = collections.deque()

    def add(self, samples: Sequence[Sample]) -> None:
        """Queue ``samples`` (a query) as batches of ``batch_size``, the last one the remainder."""
        b = self.batch_size
        self.put([list(samples[i:i + b]) for i in range(0, len(samples), b)])

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
                now, batch = self._answer_now(worker)
                if now:
                    return batch
                if self._batches and worker not in self._held:
                    return Batch(self._batches.popleft())
                if self._closed and not self._batches:
                    self._none_for(worker)
                    return None
                self._cond.wait()


class WorkLeft:
    """The source of an inline pipeline (stream scenarios): the query's batches left, handed-back ones too."""

    def __init__(self) -> None:
        self.todo: list[Batch] = []

    def requeue(self, batch: Batch) -> bool:
        batch.requeued = True
        self.todo.append(batch)
        return True

    def set_live(self, workers: Iterable[int]) -> None:
        pass

    def set_held(self, workers: Iterable[int]) -> None:
        pass


class DynamicBatcher(_Source):
    """Collects single samples into batches of at most ``max_batch``, waiting at most ``max_wait_s``.

    ``bound_s``: LoadGen's latency bound; with it, the batch size and the wait are also chosen against the
    bound from the service times measured so far (:class:`~harness.sut.budget.LatencyBudget`).
    """

    def __init__(self, max_batch: int, max_wait_s: float, bound_s: float | None = None) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"need max_batch >= 1 and max_wait_s >= 0, got {max_batch}, {max_wait_s}")
        super().__init__()
        self.budget = LatencyBudget(max_batch, max_wait_s, bound_s)
        self._size = max_batch            # the batch size last chosen (add() wakes a loader when it is reached)
        self._pending: collections.deque[tuple[float, Sample]] = collections.deque()
        self._flush = False

    def add(self, samples: Sequence[Sample]) -> None:
        now = time.monotonic()
        with self._cond:
            was_empty = not self._pending
            self._pending.extend((now, s) for s in samples)
            # Wake a loader only when it has something new to decide: the first pending sample (its wait
            # starts) or a full batch. A loader waiting for a batch to fill wakes by itself at the oldest
            # sample's deadline; waking it for every query (thousands a second) only made the workers'
            # threads fight over the GIL and CPU while LoadGen issued.
            if was_empty or len(self._pending) >= self._size:
                self._cond.notify()

    def flush(self) -> None:
        """No more samples are coming soon: stop waiting for batches to fill."""
        with self._cond:
            self._flush = True
            self._cond.notify()

    def batch_done(self, size: int, seconds: float) -> None:
        self.budget.service.observe(size, seconds)

    def next_batch(self, worker: int = 0) -> Batch | None:
        """Block until a batch closes; None once closed and empty, or when ``worker`` is retired.

        Every wake-up checks again from the start: another loader may have taken the pending samples.
        """
        with self._cond:
            while True:
                now, batch = self._answer_now(worker)
                if now:
                    return batch
                if not self._pending or worker in self._held:
                    if self._closed and not self._pending:
                        self._none_for(worker)
                        return None
                    self._cond.wait()
                    continue
                size = self._size = self.budget.cap()
                remaining = self._pending[0][0] + self.budget.wait_s(size) - time.monotonic()
                if len(self._pending) >= size or self._flush or self._closed or remaining <= 0:
                    return Batch(self._take(min(size, len(self._pending))))
                self._cond.wait(remaining)

    def _take(self, n: int) -> list[Sample]:
        batch = [self._pending.popleft()[1] for _ in range(n)]
        if not self._pending:
            self._flush = False
        return batch
