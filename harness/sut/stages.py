"""What each pipeline stage does with one batch on one worker: load, compute, finish.

- load:    ``qsl.get_batch`` (host gather), then the worker's ``stage`` when it
           has one (its host-to-device copy). A batch that fails to load is
           retried per sample, so only unreadable samples fail. Given
           :class:`BatchBuffers`, the gather fills them instead of fresh
           tensors (a QSL taking ``out``): the threaded pipeline gives each
           batch a worker may hold its own, reused once the batch is computed.
- compute: the worker's ``predict``. A batch that raises goes to another
           worker first when the pipeline's router can send it there (the
           device may have failed); otherwise, or when it raised there too, it
           is retried one sample at a time, so a single bad sample fails alone.
- finish:  the 7-float response records, completed in one call.

Failures are completed and counted by the :class:`Completer` with their stage
name. :class:`~backends.base.WorkerLost` is not a sample's failure: load and
compute raise :class:`Lost` with the samples the worker did not finish, and
the pipeline decides where they go (harness/sut/pipeline.py).
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch

from backends.base import WorkerLost, slice_batch
from harness.sut.batching import Batch
from harness.sut.completion import Completer, Sample
from harness.sut.response import to_record
from harness.sut.workers import Worker

log = logging.getLogger("harness")

Emit = Callable[[list[Sample], list[torch.Tensor]], None]   # where computed (samples, detections) go
Parts = list[tuple[list[Sample], Any]]                        # a loaded batch: (samples, inputs) per part


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


class Router(Protocol):
    """Where a batch goes when its worker cannot compute it (the pipeline)."""

    def hand_off(self, w: Worker, batch: Batch | None, samples: list[Sample], error: Exception) -> bool:
        """Give ``samples`` (of ``batch``, which raised ``error`` on ``w``) to another worker; False if none can."""

    def computed(self, w: Worker, batch: Batch | None) -> None:
        """``w`` computed the whole ``batch``, and it had failed on another worker or ``w`` has strikes."""


class Lost(Exception):
    """A worker raised WorkerLost; ``leftover``: the samples of its batch it did not finish."""

    def __init__(self, cause: WorkerLost, leftover: list[Sample]) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.leftover = leftover


def _predict(backend: Any, inputs, n: int) -> list[torch.Tensor]:
    dets = backend.predict(*inputs)
    if len(dets) != n:
        raise RuntimeError(f"backend returned {len(dets)} results for a batch of {n}")
    return dets


class StageWork:
    """The stages' work for one pipeline: its QSL and its completer."""

    def __init__(self, qsl: QSLLike, completer: Completer, router: Router | None = None) -> None:
        self.qsl = qsl
        self.completer = completer
        self.router = router

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
        Lost (all of ``batch``) when the worker is lost while staging.
        """
        try:
            try:
                return [(batch, self._gather(backend, [s.index for s in batch], buffers))]
            except WorkerLost:
                raise
            except Exception as e:  # noqa: BLE001 - every failure is reported per sample
                if len(batch) == 1:
                    self.completer.fail(batch, "load", e)
                    return []
            out = []
            for s in batch:
                try:
                    out.append(([s], self._gather(backend, [s.index])))
                except WorkerLost:
                    raise
                except Exception as e:  # noqa: BLE001
                    self.completer.fail([s], "load", e)
            return out
        except WorkerLost as e:
            raise Lost(e, list(batch)) from None

    def compute(self, batch: list[Sample], inputs, w: Worker, emit: Emit, whole: Batch | None = None) -> None:
        """Predict ``batch`` (all or part of ``whole``) on ``w`` and ``emit`` it. If it raises, the router may
        send it to another worker; else each sample is predicted alone so only bad samples fail. Raises
        Lost (with the samples not computed yet) when the worker is lost."""
        try:
            dets = _predict(w.backend, inputs, len(batch))
        except WorkerLost as e:
            raise Lost(e, list(batch)) from None
        except Exception as e:  # noqa: BLE001
            if self.router is not None and self.router.hand_off(w, whole, batch, e):
                return
            if len(batch) == 1:
                self.completer.fail(batch, "predict", e)
                return
            log.warning("a batch of %d failed (%s: %s); retrying its samples one by one",
                        len(batch), type(e).__name__, e)
        else:
            if self.router is not None and (w.strikes or (whole is not None and whole.failed_on is not None)):
                self.router.computed(w, whole)
            emit(batch, dets)
            return
        for i, s in enumerate(batch):
            try:
                dets = _predict(w.backend, slice_batch(*inputs, i, i + 1), 1)   # keeps a staged copy event
            except WorkerLost as e:
                raise Lost(e, list(batch[i:])) from None
            except Exception as e:  # noqa: BLE001
                self.completer.fail([s], "predict", e)
            else:
                emit([s], dets)

    def compute_parts(self, w: Worker, parts: Parts, emit: Emit, whole: Batch | None = None) -> Lost | None:
        """Compute the loaded parts of ``whole`` on ``w``; on a loss, what it left undone (returned, not raised)."""
        for k, (samples, inputs) in enumerate(parts):
            try:
                self.compute(samples, inputs, w, emit, whole)
            except Lost as lost:
                lost.leftover += [s for p, _ in parts[k + 1:] for s in p]
                return lost
        return None

    def finish(self, batch: list[Sample], dets: list[torch.Tensor]) -> None:
        """Build each sample's record and complete the batch in one call; a bad record fails its sample."""
        good, records = [], []
        for s, d in zip(batch, dets):
            try:
                records.append(to_record(d, s.index))
                good.append(s)
            except Exception as e:  # noqa: BLE001
                self.completer.fail([s], "record", e)
        self.completer.complete(good, records)
