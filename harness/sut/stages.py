"""What the pipeline's stages do with one batch on one worker: load it, compute it.

- load:    ``qsl.get_batch`` (host gather), then the worker's ``stage`` when it
           has one (its host-to-device copy). A batch that fails to load is
           retried per sample, so only unreadable samples fail. Given
           :class:`BatchBuffers`, the gather fills them instead of fresh
           tensors (a QSL taking ``out``): the threaded pipeline gives each
           batch a worker may hold its own, reused once the batch is computed.
- compute: the worker's ``predict``; returns the (samples, detections) to
           complete (``Completer.complete_detections``). A batch that raises
           goes where harness/sut/workers.py's rules send it: to a worker on
           another device, or split into samples computed one by one, so a bad
           sample fails alone. A batch out of device memory is split at once.

Both return to the pipeline; nothing here calls back into it. Failures are
completed and counted by the :class:`Completer` with their stage name. A lost
worker is not a sample's failure: :class:`~backends.base.WorkerLost`, and an
error that poisons the device (``backends.base.poisons_device``, raised on as
:class:`~backends.base.DeviceLost`), end the batch with :class:`Lost`, which
holds the samples the worker did not finish; the pipeline hands them on.
Each ``predict`` call marks its worker busy (``Worker.busy_since``), the
clock of the pipeline's deadline.
"""
from __future__ import annotations

import inspect
import logging
import queue
import threading
import time
from typing import Any, Mapping, Protocol, Sequence

import torch

from backends.base import DeviceLost, WorkerLost, is_out_of_memory, poisons_device, slice_batch
from harness.sut.batching import Batch
from harness.sut.completion import Completer, Sample
from harness.sut.workers import Routing, Worker

log = logging.getLogger("harness")

Parts = list[tuple[list[Sample], Any]]                  # a loaded batch: (samples, inputs) per part
Done = list[tuple[list[Sample], list[torch.Tensor]]]    # computed: (samples, detections) to complete


class QSLLike(Protocol):
    def get_batch(self, indices: Sequence[int]) -> tuple[Mapping[int, torch.Tensor], torch.Tensor]:
        """({S: uint8 Tensor[B, 3, S, S]}, int Tensor[B, 2] original (height, width))."""


def gathers_into_buffers(qsl: Any) -> bool:
    """Whether ``qsl.get_batch`` takes ``out`` (reusable tensors) and says which ``sizes`` it returns."""
    try:
        return hasattr(qsl, "sizes") and "out" in inspect.signature(qsl.get_batch).parameters
    except (TypeError, ValueError):
        return False


class BatchBuffers:
    """Input tensors for one batch {S: uint8 [capacity, 3, S, S]}, reused batch after batch.

    They grow to the largest batch asked and are never shrunk. A batch gathered into them must be done
    with (predicted; on CUDA its copy to the device waited for) before the next gather: the pipeline
    hands them back only after ``predict`` returned. ``pin``: page-locked, for asynchronous copies.
    """

    def __init__(self, sizes: Sequence[int], pin: bool = False) -> None:
        self.sizes = tuple(sizes)
        self.pin = pin
        self._tensors: dict[int, torch.Tensor] = {}

    def take(self, batch: int) -> dict[int, torch.Tensor]:
        """{S: uint8 Tensor[batch, 3, S, S]} views of the buffers."""
        for s in self.sizes:
            t = self._tensors.get(s)
            if t is None or t.shape[0] < batch:
                self._tensors[s] = torch.empty((batch, 3, s, s), dtype=torch.uint8, pin_memory=self.pin)
        return {s: self._tensors[s][:batch] for s in self.sizes}


class Slots:
    """Per worker, a slot for each batch it may hold (computing + ``ahead``): its :class:`BatchBuffers`, or a
    plain credit (None) without a QSL that gathers into buffers. The loader takes one before it asks the
    source for a batch and gathers into it; the compute thread gives it back once the batch is computed."""

    def __init__(self, qsl: Any, workers: int, ahead: int) -> None:
        reuse = gathers_into_buffers(qsl)
        self.free: list[queue.Queue] = []
        for _ in range(workers):
            free: queue.Queue = queue.Queue()
            for _ in range(1 + ahead):
                free.put(BatchBuffers(qsl.sizes, getattr(qsl, "pin_memory", False)) if reuse else None)
            self.free.append(free)

    def prepare(self, max_batch: int) -> None:
        """Make (and touch) every slot's buffers for ``max_batch`` now, before LoadGen times anything: on
        first touch each page of fresh memory faults, which costs about twice the copy that fills it."""
        for free in self.free:
            for buffers in list(free.queue):
                if buffers is not None:
                    for t in buffers.take(max_batch).values():
                        t.zero_()

    def take(self, w: Worker, stopping: threading.Event, poll_s: float) -> tuple[bool, Any]:
        """(True, a free slot of ``w``) once there is one; (False, None) once ``stopping`` is set or ``w``
        is retired."""
        while not (stopping.is_set() or w.retired):
            try:
                return True, self.free[w.index].get(timeout=poll_s)
            except queue.Empty:
                continue
        return False, None

    def give(self, worker: int, slot: Any) -> None:
        self.free[worker].put(slot)


def use_backend_threads(backend: Any) -> None:
    """Set torch's CPU thread count to ``backend.threads`` (when it has one) on the calling thread: the count
    is per thread (OpenMP), so it is set where the model runs."""
    threads = getattr(backend, "threads", 0)
    if threads:
        torch.set_num_threads(threads)


class Lost(Exception):
    """A worker (or its device) was lost; ``leftover``: the samples of its batch it did not finish."""

    def __init__(self, cause: WorkerLost, leftover: list[Sample]) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.leftover = leftover


def _lost(e: Exception, leftover: list[Sample]) -> Lost | None:
    """The Lost that ``e`` means, or None for an error of the batch (it may be its samples' fault)."""
    if isinstance(e, WorkerLost):
        return Lost(e, leftover)
    if poisons_device(e):
        return Lost(DeviceLost(f"{type(e).__name__}: {e}"), leftover)
    return None


def _predict(w: Worker, samples: list[Sample], inputs) -> list[torch.Tensor]:
    w.holding, w.busy_since = samples, time.monotonic()
    try:
        dets = w.backend.predict(*inputs)
    finally:
        w.busy_since = None
    if len(dets) != len(samples):
        raise RuntimeError(f"backend returned {len(dets)} results for a batch of {len(samples)}")
    return dets


class StageWork:
    """The stages' work for one pipeline: its QSL, its completer and its routing of failed batches."""

    def __init__(self, qsl: QSLLike, completer: Completer, routing: Routing) -> None:
        self.qsl = qsl
        self.completer = completer
        self.routing = routing

    def _gather(self, backend: Any, indices: list[int], buffers: BatchBuffers | None = None):
        if buffers is None:
            inputs = self.qsl.get_batch(indices)
        else:
            inputs = self.qsl.get_batch(indices, out=buffers.take(len(indices)))
        stage = getattr(backend, "stage", None)
        return stage(*inputs) if stage is not None else inputs

    def load(self, batch: list[Sample], backend: Any, buffers: BatchBuffers | None = None) -> Parts:
        """Gather (and stage) the batch's inputs: one part, or one per sample when the batch fails to load.

        ``buffers``: where to gather the whole batch (the per-sample retries use fresh tensors). Raises
        Lost (all of ``batch``) when the worker or its device is lost while staging.
        """
        try:
            return [(batch, self._gather(backend, [s.index for s in batch], buffers))]
        except Exception as e:  # noqa: BLE001 - every failure is reported per sample
            if (lost := _lost(e, list(batch))) is not None:
                raise lost from None
            if len(batch) == 1:
                self.completer.fail(batch, "load", e)
                return []
        out = []
        for s in batch:
            try:
                out.append(([s], self._gather(backend, [s.index])))
            except Exception as e:  # noqa: BLE001
                if (lost := _lost(e, list(batch))) is not None:
                    raise lost from None
                self.completer.fail([s], "load", e)
        return out

    def compute(self, w: Worker, parts: Parts, batch: Batch) -> tuple[Done, Lost | None]:
        """Compute the loaded ``parts`` of ``batch`` on ``w``: what to complete, and the loss that ended it
        early (with every sample not computed yet) or None."""
        done: Done = []
        try:
            for k, (samples, inputs) in enumerate(parts):
                try:
                    self._compute(w, samples, inputs, batch, done)
                except Lost as lost:
                    lost.leftover += [s for p, _ in parts[k + 1:] for s in p]
                    return done, lost
            return done, None
        finally:
            if batch.sent_from is not None:
                self.routing.settle(batch)

    def _compute(self, w: Worker, samples: list[Sample], inputs, batch: Batch, done: Done) -> None:
        """Predict ``samples`` (all or part of ``batch``) on ``w``. If it raises, the routing may send them to
        another device; else each sample is predicted alone, and one that raises goes on to another device
        or fails alone. Raises Lost (with the samples not computed yet) when the worker is lost."""
        try:
            done.append((samples, _predict(w, samples, inputs)))
        except Exception as e:  # noqa: BLE001
            if (lost := _lost(e, list(samples))) is not None:
                raise lost from None
            oom = len(samples) > 1 and is_out_of_memory(e)   # too large a batch, not a failing device
            if not oom and self.routing.hand_off(w, batch, samples, e):
                return
            if len(samples) == 1:
                self.completer.fail(samples, "predict", e)
                return
            self.routing.split(w, samples, e)
        else:
            self._computed(w, batch)
            return
        for i, s in enumerate(samples):
            alone = Batch([s])
            try:
                done.append(([s], _predict(w, [s], slice_batch(*inputs, i, i + 1))))  # keeps a staged copy event
            except Exception as e:  # noqa: BLE001
                if (lost := _lost(e, list(samples[i:]))) is not None:
                    raise lost from None
                if not self.routing.hand_off(w, alone, [s], e):
                    self.completer.fail([s], "predict", e)
            else:
                self._computed(w, alone)

    def _computed(self, w: Worker, batch: Batch) -> None:
        if batch.failed_on or self.routing.pool.strikes[w.device]:
            self.routing.computed(w, batch)


def wait_ready(backend: Any, stop: threading.Event, poll_s: float) -> bool:
    """Wait until ``backend`` takes a batch: one with ``wait_ready`` (a remote worker whose process restarts)
    may hold off. False once ``stop`` is set; ``wait_ready`` raises WorkerLost for a worker that will never be
    ready."""
    ready = getattr(backend, "wait_ready", None)
    while ready is not None and not stop.is_set():
        if ready(poll_s):
            return True
    return ready is None
