"""The workers a pipeline computes on, the devices they share, and where a batch goes when one fails.

A worker is one backend that computes on its own: one per CUDA stream pair (two per GPU), per slot
of a simulated device, per remote actor worker. Workers on one device (``backends.base.device_of``)
fail together, so the rules are about devices (docs/faults.md):

- :class:`~backends.base.WorkerLost` from a worker's ``predict`` or ``stage`` (or a call past the
  pipeline's deadline) retires that worker; :class:`~backends.base.DeviceLost`, which the stages
  raise for an error that poisons the device (a sticky CUDA error), retires every worker of its
  device at once. What they held goes back to the workers left.
- Any other error: the batch goes to a worker on ANOTHER device that still runs (its device may
  have failed); until it is settled there, the workers of the device it failed on take only
  handed-back batches (``set_held`` of the source). A batch that already failed on another device
  is split where it failed again, each sample computed alone (a batch out of device memory at
  once, on its own worker: harness/sut/stages.py); a sample that fails alone goes on to a device
  it has not failed on, so a bad sample fails alone, and only once it failed on every device
  still running.
- When something that failed on device d is computed on another device, d gets a strike;
  ``MAX_STRIKES`` in a row (nothing of its own computed in between) retire d as a whole, and its
  batches are computed on the other devices.
- Only when no worker is left do samples fail, and the completer closes.

Assumption: a device's workers are independent only in their host-side state; whatever poisons
the device poisons them all.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

from backends.base import DeviceLost, WorkerLost, device_of
from harness.sut.batching import Batch, BatchSource
from harness.sut.completion import Completer, Sample

log = logging.getLogger("harness")

MAX_STRIKES = 3   # failures in a row on a device that other devices then computed: the device is retired


@dataclass(eq=False)
class Worker:
    index: int                 # position in the pool, the id a batch source knows it by
    backend: Any               # what computes: ``predict`` (and ``stage`` when it has one)
    device: str                # the device it computes on (``device_of``): workers of one device fail together
    retired: bool = False      # lost: takes no more batches
    busy_since: float | None = None            # monotonic start of the call in flight (the deadline's clock)
    holding: list[Sample] = field(default_factory=list)   # the samples of that call


def backend_workers(backend: Any) -> list[Any]:
    """The backends that compute concurrently: ``backend.workers()`` when it has that, else ``[backend]``."""
    workers = getattr(backend, "workers", None)
    return list(workers()) if callable(workers) else [backend]


class WorkerPool:
    """The workers of one pipeline by device; retirement is thread-safe and happens at most once per worker."""

    def __init__(self, backends: Sequence[Any]) -> None:
        self.workers = [Worker(i, b, device_of(b) or f"worker {i}") for i, b in enumerate(backends)]
        self.strikes: dict[str, int] = {w.device: 0 for w in self.workers}
        self.lost: list[str] = []   # "worker i of n lost: why", one per retired worker, in order
        self.recomputed = 0         # batches that failed (or whose worker was lost) and were computed again
        self._lock = threading.Lock()

    def live(self) -> list[Worker]:
        return [w for w in self.workers if not w.retired]

    def first(self, avoid: Sequence[int] = ()) -> Worker | None:
        """The first worker still running whose index is not in ``avoid``, else the first one still running."""
        live = self.live()
        return next((w for w in live if w.index not in avoid), live[0] if live else None)

    def live_devices(self) -> set[str]:
        return {w.device for w in self.workers if not w.retired}

    def on_devices(self, devices: set[str] | frozenset[str]) -> frozenset[int]:
        """The indices of every worker on ``devices``."""
        return frozenset(w.index for w in self.workers if w.device in devices)

    def retire(self, workers: Sequence[Worker], why: str) -> int:
        """Retire ``workers`` (each at most once); returns how many workers are left."""
        with self._lock:
            fresh = [w for w in workers if not w.retired]
            for w in fresh:
                w.retired = True
            left = len(self.live())
        on = {w: "" if w.device == f"worker {w.index}" else f" ({w.device})" for w in fresh}   # a device of its own
        for w in fresh:
            self.lost.append(f"worker {w.index} of {len(self.workers)}{on[w]} lost: {why}")
        if fresh:
            which = ", ".join(str(w.index) for w in fresh)
            log.error("worker%s %s of %d%s lost (%s); %d left%s", "s" if len(fresh) > 1 else "", which,
                      len(self.workers), on[fresh[0]], why, left, ", its batches go to them" if left else "")
        return left

    def strike(self, device: str) -> bool:
        """Another device computed what failed on ``device``; True when that makes MAX_STRIKES."""
        with self._lock:
            self.strikes[device] += 1
            return self.strikes[device] >= MAX_STRIKES

    def cleared(self, device: str) -> None:
        """``device`` computed something: its strikes start again from zero."""
        if self.strikes[device]:
            with self._lock:
                self.strikes[device] = 0

    def counted_recompute(self) -> None:
        """One more batch failed (or its worker was lost computing it) and is computed again."""
        with self._lock:
            self.recomputed += 1


class Routing:
    """Where samples go when their worker cannot compute them (the rules of this module's docstring).

    ``source`` takes batches back for the other workers (the threaded pipeline's batch source, or the
    inline pipeline's work left) and says whether one will take them.
    """

    def __init__(self, pool: WorkerPool, completer: Completer, source: BatchSource) -> None:
        self.pool = pool
        self.completer = completer
        self.source = source
        self._unsettled = {w.device: 0 for w in pool.workers}   # per device: its failed batches sent on, unsettled
        self._lock = threading.Lock()

    def retire(self, w: Worker, cause: WorkerLost, samples: list[Sample]) -> bool:
        """Retire the lost worker ``w`` (its whole device for :class:`DeviceLost`) and hand ``samples``
        (those it did not finish) to the workers left; True when there are any. Otherwise they fail, and
        the caller closes the completer (every other outstanding and later sample fails with them)."""
        gone = [x for x in self.pool.workers if x.device == w.device] if isinstance(cause, DeviceLost) else [w]
        left = self.pool.retire(gone, f"{type(cause).__name__}: {cause}")
        self.source.set_live(x.index for x in self.pool.live())
        if left:
            self.hand_back(Batch(samples), failed=True)
            return True
        self.completer.fail(samples, "predict", cause)
        return False

    def hand_back(self, batch: Batch, failed: bool = False) -> None:
        """Give the samples of ``batch`` not completed yet to the workers still running; when none takes batches
        any more (the SUT is stopping), they fail. ``failed``: its worker was lost computing it (so it counts
        as recomputed), not before it began."""
        self.settle(batch)
        pending = self.completer.pending(batch.samples)
        if not pending:
            return
        if failed:
            self.pool.counted_recompute()
        if not self.source.requeue(Batch(pending)):
            self.completer.fail(pending, "worker", "its worker was lost and no other worker takes batches")

    def hand_off(self, w: Worker, batch: Batch, samples: list[Sample], error: Exception) -> bool:
        """``samples`` (``batch`` or one of its samples alone) raised ``error`` on ``w``: give them to a worker
        on a device they have not failed on. False when the caller should split them (a batch that had
        already failed on another device) or fail them (one sample, no such device left)."""
        failed = batch.failed_on | {w.device}
        if (len(samples) > 1 and batch.failed_on) or not self.pool.live_devices() - failed:
            return False
        pending = self.completer.pending(samples)
        if not pending:
            return True
        sent = Batch(pending, failed_on=failed, avoid=self.pool.on_devices(failed), sent_from=w.device)
        self._count_unsettled(w.device, +1)
        if not self.source.requeue(sent):
            self.settle(sent)
            return False
        self.pool.counted_recompute()
        log.warning("%s on worker %d (%s) failed (%s: %s); a worker on another device takes it",
                    f"a batch of {len(samples)}" if len(samples) > 1 else f"sample {samples[0].index}",
                    w.index, w.device, type(error).__name__, error)
        return True

    def settle(self, batch: Batch) -> None:
        """A worker is done with ``batch`` (computed, failed, or passed on as another batch): the device that
        handed it on takes fresh batches again once none of its failed ones is left unsettled."""
        with self._lock:
            device, batch.sent_from = batch.sent_from, None
        if device is not None:
            self._count_unsettled(device, -1)

    def _count_unsettled(self, device: str, change: int) -> None:
        """Count a failed batch of ``device`` sent on (+1) or settled (-1), and tell the source who is held:
        the workers of a device whose failures are unconfirmed take only handed-back batches, so a device
        that fails at once cannot take batch after batch before the others show it failed (strikes)."""
        with self._lock:   # held while the source hears it, so updates reach it in order
            self._unsettled[device] += change
            self.source.set_held(self.pool.on_devices({d for d, n in self._unsettled.items() if n > 0}))

    def split(self, w: Worker, samples: list[Sample], error: Exception) -> None:
        """``samples`` failed together on ``w`` after failing on another device: each is computed alone."""
        self.pool.counted_recompute()
        log.warning("a batch of %d failed on worker %d (%s) too (%s: %s); computing its samples one by one",
                    len(samples), w.index, w.device, type(error).__name__, error)

    def computed(self, w: Worker, batch: Batch) -> None:
        """``w`` computed ``batch`` (or one of its samples alone): its device's strikes end; each device the
        batch had failed on gets one, and is retired at MAX_STRIKES."""
        self.pool.cleared(w.device)
        for device in batch.failed_on - {w.device}:
            if device in self.pool.live_devices() and self.pool.strike(device):
                on = [x for x in self.pool.workers if x.device == device]
                self.retire(on[0], DeviceLost(f"{MAX_STRIKES} times in a row what failed on it was computed by "
                                              "another device"), [])
