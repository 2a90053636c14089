"""What every SUT shares: the completer, the pipeline, and LoadGen's two callbacks.

A subclass decides only how issued samples become batches (``_enqueue``) and
what a flush means. ``issue_queries`` runs on LoadGen's thread holding the
GIL: for Offline and Server it only registers the samples and enqueues them
(the pipeline's threads do the work); the stream SUTs do the work right
there. LoadGen's ``ConstructSUT``/``DestroySUT`` take the two callbacks
(exactly two in LoadGen 6.0) in harness/run/loadgen_thread.py, beside
``ConstructQSL`` and ``StartTest``.
"""
from __future__ import annotations

import threading
from typing import Any, Sequence

from harness.sut.batching import BatchSource
from harness.sut.completion import Completer, Sample
from harness.sut.pipeline import Pipeline, QSLLike


class BaseSUT:
    """A system under test: LoadGen callbacks in front of a :class:`Pipeline`."""

    scenario = ""
    threaded = True
    ahead = 1   # batches a worker may have loaded beyond the one it computes (see Pipeline)

    def __init__(self, backend: Any, qsl: QSLLike, source: BatchSource | None,
                 completer: Completer | None = None, max_batch: int | None = None,
                 deadline_s: float | None = None) -> None:
        self.completer = completer or Completer()
        self.source = source
        self.pipeline = Pipeline(backend, qsl, self.completer, source, threaded=self.threaded, ahead=self.ahead,
                                 name=self.scenario or type(self).__name__, max_batch=max_batch,
                                 deadline_s=deadline_s)
        self.issued = 0

    def start(self) -> None:
        self.pipeline.start()

    def stop(self) -> None:
        self.pipeline.stop()

    def alive_threads(self) -> list[threading.Thread]:
        """The pipeline's threads still running (after stop(), one stuck in a batch that never returns)."""
        return self.pipeline.alive_threads()

    # -- LoadGen callbacks -------------------------------------------------------
    def issue_queries(self, query_samples: Sequence[Any]) -> None:
        """Register the samples, then hand them on (``_enqueue``)."""
        samples = [Sample(q.id, q.index) for q in query_samples]
        self.issued += len(samples)
        if self.completer.register(samples):
            self._enqueue(samples)

    def flush_queries(self) -> None:
        pass

    def _enqueue(self, samples: list[Sample]) -> None:
        """Hand registered samples to the batch source (Offline and Server); the stream SUTs compute them."""
        self.source.add(samples)
