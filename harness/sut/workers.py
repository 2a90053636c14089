"""The workers a pipeline computes on, and which of them are still running.

A worker is one backend that computes on its own: one per GPU or CUDA stream
(``backend.workers()``), one per simulated device, one per remote actor. A
worker whose ``predict`` or ``stage`` raises :class:`~backends.base.WorkerLost`
is retired here, once: it takes no more batches and the pipeline hands the
batch it held to the workers left. Only when none is left do samples fail.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Sequence

log = logging.getLogger("harness")


@dataclass(eq=False)
class Worker:
    index: int                 # position in the pool, the id a batch source knows it by
    backend: Any               # what computes: ``predict`` (and ``stage`` when it has one)
    retired: bool = False      # lost: takes no more batches
    batches: int = 0           # batches it computed
    samples: int = 0           # samples it computed


class WorkerPool:
    """The workers of one pipeline; retirement is thread-safe and happens at most once per worker."""

    def __init__(self, backends: Sequence[Any]) -> None:
        self.workers = [Worker(i, b) for i, b in enumerate(backends)]
        self._lock = threading.Lock()

    def live(self) -> list[Worker]:
        return [w for w in self.workers if not w.retired]

    def first_live(self) -> Worker | None:
        for w in self.workers:
            if not w.retired:
                return w
        return None

    def retire(self, worker: Worker, why: str) -> int:
        """Retire ``worker`` (a no-op the second time); returns how many workers are left."""
        with self._lock:
            first = not worker.retired
            worker.retired = True
            left = sum(not w.retired for w in self.workers)
        if first:
            log.error("worker %d of %d was lost (%s); %d left%s", worker.index, len(self.workers), why, left,
                      ", its batches go to them" if left else "")
        return left

    def counted(self, worker: Worker, samples: int) -> None:
        """``worker`` computed a batch of ``samples`` (for the shares each worker got)."""
        with self._lock:
            worker.batches += 1
            worker.samples += samples
