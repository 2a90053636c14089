"""Workers for the pipeline's tests that sleep instead of computing, and the helpers that drive them.

The GIL is free while a worker sleeps, so the tests exercise the harness's threads and queues as a GPU
machine would, on any CPU. Assertions built on them are about counts and exactly-once completion.
"""
from __future__ import annotations

import threading
import time

from backends.base import WorkerLost
from backends.null import NullBackend
from harness.sut.batching import BatchQueue
from harness.sut.completion import Completer, Sample
from harness.sut.pipeline import Pipeline
from qsl.memory_qsl import MemoryQSL
from tests.test_harness_units import Recorder


class SleepWorker(NullBackend):
    """One worker: holds each batch ``ms`` milliseconds (sleeping), counts what it computed.

    ``lost_after``: after that many batches every call raises WorkerLost (``where`` = "predict" or "stage").
    ``broken``: every predict raises a plain RuntimeError (a failed device that does not say it is lost).
    """

    def __init__(self, ms: float = 0.0, lost_after: int | None = None, where: str = "predict",
                 broken: bool = False) -> None:
        super().__init__(latency_ms=ms)
        self.lost_after, self.where, self.broken = lost_after, where, broken
        self.batches = self.samples = 0
        self.staged = self.predicted = 0     # calls, counted where the loss is to happen
        self.after_loss = 0                  # calls made to this worker after it said it was lost
        self.lock = threading.Lock()

    def _check_lost(self, calls: int) -> None:
        if self.lost_after is not None and calls >= self.lost_after:
            self.after_loss += 1
            raise WorkerLost("the device fell off the bus")

    def stage(self, images, image_hw):
        if self.where == "stage":
            self._check_lost(self.staged)
            self.staged += 1
        return images, image_hw

    def predict(self, images, image_hw):
        if self.where == "predict":
            self._check_lost(self.predicted)
            self.predicted += 1
        out = super().predict(images, image_hw)
        if self.broken:
            raise RuntimeError("device error: illegal memory access")
        with self.lock:
            self.batches += 1
            self.samples += int(image_hw.shape[0])
        return out


class Workers(SleepWorker):
    """A backend with several workers (as one per GPU): itself first, then the others."""

    def __init__(self, workers: list[SleepWorker]) -> None:
        super().__init__()
        self.all = workers

    def workers(self):
        return self.all

    def predict(self, images, image_hw):   # the pipeline calls the workers, never this
        return self.all[0].predict(images, image_hw)


def wait_for(cond, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.005)
    return cond()


def make_pipeline(backend, n_samples: int = 64, **kw):
    rec, qsl = Recorder(), MemoryQSL(n_samples)
    qsl.load(range(n_samples))
    c = Completer(rec.complete, rec.response)
    source = BatchQueue()
    pipe = Pipeline(backend, qsl, c, source, threaded=True, **kw)
    samples = [Sample(1000 + i, i) for i in range(n_samples)]
    c.register(samples)
    return pipe, source, c, rec, samples


def exactly_once(rec: Recorder, samples: list[Sample]) -> dict[int, bytes]:
    ids = [i for i, _ in rec.done]
    assert sorted(ids) == sorted(s.id for s in samples), "a sample was lost or completed twice"
    return dict(rec.done)
