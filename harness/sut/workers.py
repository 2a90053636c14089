"""The workers a pipeline computes on, and which of them are still running.

A worker is one backend that computes on its own: one per GPU or CUDA stream
(``backend.workers()``), one per simulated device, one per remote actor. A
worker whose ``predict`` or ``stage`` raises :class:`~backends.base.WorkerLost`
is retired here, once: it takes no more batches and the pipeline hands the
batch it held to the workers left. Only when none is left do samples fail.

A batch that raises anything else on a worker goes to another worker first
(its device may have failed); when another worker then computes it, the first
one gets a strike, and ``MAX_STRIKES`` in a row (no batch of its own computed
in between) retire it as lost: a device that fails every batch it gets would
otherwise keep taking batches only to pass them on.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from backends.base import WorkerLost
from harness.sut.batching import Batch
from harness.sut.completion import Completer, Sample

log = logging.getLogger("harness")

MAX_STRIKES = 3   # batches in a row that failed on a worker and that other workers computed


@dataclass(eq=False)
class Worker:
    index: int                 # position in the pool, the id a batch source knows it by
    backend: Any               # what computes: ``predict`` (and ``stage`` when it has one)
    retired: bool = False      # lost: takes no more batches
    strikes: int = 0           # its batches in a row that failed on it and then were computed elsewhere


def backend_workers(backend: Any) -> list[Any]:
    """The backends that compute concurrently: ``backend.workers()`` when it has that, else ``[backend]``."""
    workers = getattr(backend, "workers", None)
    return list(workers()) if callable(workers) else [backend]


class WorkerPool:
    """The workers of one pipeline; retirement is thread-safe and happens at most once per worker."""

    def __init__(self, backends: Sequence[Any]) -> None:
        self.workers = [Worker(i, b) for i, b in enumerate(backends)]
        self.lost: list[str] = []   # "worker i of n lost: why", one per retired worker, in order
        self._lock = threading.Lock()

    def live(self) -> list[Worker]:
        return [w for w in self.workers if not w.retired]

    def retire(self, worker: Worker, why: str) -> int:
        """Retire ``worker`` (a no-op the second time); returns how many workers are left."""
        with self._lock:
            first = not worker.retired
            worker.retired = True
            left = len(self.live())
        if first:
            self.lost.append(f"worker {worker.index} of {len(self.workers)} lost: {why}")
            log.error("worker %d of %d was lost (%s); %d left%s", worker.index, len(self.workers), why, left,
                      ", its batches go to them" if left else "")
        return left

    def strike(self, worker: Worker) -> bool:
        """Another worker computed a batch that failed on ``worker``; True when that makes MAX_STRIKES."""
        with self._lock:
            worker.strikes += 1
            return worker.strikes >= MAX_STRIKES

    def cleared(self, worker: Worker) -> None:
        """``worker`` computed a batch: its strikes start again from zero."""
        if worker.strikes:
            with self._lock:
                worker.strikes = 0


class Routing:
    """Where samples go when their worker cannot compute them; the Router of harness/sut/stages.py.

    ``requeue(batch)`` gives a batch to the other workers (the batch source, or inline the query's work
    left) and says whether one will take it; ``close(why)`` closes the completer once the results already
    computed are completed; ``live(indices)`` hears which workers still run after a retirement.
    """

    def __init__(self, pool: WorkerPool, completer: Completer, requeue: Callable[[Batch], bool],
                 close: Callable[[str], None], live: Callable[[list[int]], None] | None = None) -> None:
        self.pool = pool
        self.completer = completer
        self._requeue = requeue
        self._close = close
        self._live = live      # told the workers still running after each retirement (the batch source)

    def retire(self, w: Worker, cause: WorkerLost, samples: list[Sample]) -> bool:
        """Retire the lost worker ``w`` and hand ``samples`` (those it did not finish) back to the workers
        left (:meth:`hand_back`); True when there are any. Otherwise they fail, and so does every other
        outstanding and later sample (the completer closes)."""
        left = self.pool.retire(w, f"{type(cause).__name__}: {cause}")
        if self._live is not None:
            self._live([x.index for x in self.pool.live()])
        if left:
            self.hand_back(samples)
            return True
        self.completer.fail(samples, "predict", cause)
        self._close(f"no worker is left: the last one was lost ({type(cause).__name__}: {cause})")
        return False

    def hand_back(self, samples: list[Sample]) -> None:
        """Give the samples not completed yet to the workers still running; when none takes batches any more
        (the SUT is stopping), they fail."""
        pending = self.completer.pending(samples)
        if pending and not self._requeue(Batch(pending)):
            self.completer.fail(pending, "worker", "its worker was lost and no other worker takes batches")

    def hand_off(self, w: Worker, batch: Batch | None, samples: list[Sample], error: Exception) -> bool:
        """A batch raised on ``w``: give it whole to another worker, unless it already failed on one (then
        a bad sample is the likelier cause) or no other worker runs."""
        others = sum(x is not w for x in self.pool.live())   # still running, w aside (retired or not)
        if (batch is not None and batch.failed_on is not None) or others < 1:
            return False
        if not self._requeue(Batch(list(samples), failed_on=w.index)):   # no other worker takes batches
            return False
        log.warning("a batch of %d failed on worker %d (%s: %s); another worker takes it", len(samples), w.index,
                    type(error).__name__, error)
        return True

    def computed(self, w: Worker, batch: Batch | None) -> None:
        """``w`` computed a whole batch: its strikes end; the worker the batch had failed on gets one."""
        self.pool.cleared(w)
        if batch is None or batch.failed_on is None or batch.failed_on == w.index:
            return
        failed = self.pool.workers[batch.failed_on]
        if not failed.retired and self.pool.strike(failed):
            self.retire(failed, WorkerLost(f"{MAX_STRIKES} batches in a row failed on it and other workers "
                                           "computed them"), [])
