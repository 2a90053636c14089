"""The worker side of every SUT: load a batch, predict, pack and complete it.

Three stages, each owned by one thread when ``threaded`` (Offline, Server):

    loader:    next batch from the SUT's batch source, ``qsl.get_batch`` (host gather)
    compute:   ``backend.predict`` (host-to-device copy, network, post-processing)
    completer: response records, one ``QuerySamplesComplete`` per batch

Bounded queues between them let the loader gather batch n+1 and the completer
pack batch n-1 while the backend computes batch n, so the device is not idle
while results are packed. With ``threaded=False`` (SingleStream, MultiStream,
where LoadGen waits for a query before issuing the next, so there is nothing
to overlap) the pipeline starts no thread: the SUT calls ``run_inline`` on
LoadGen's issue thread, which runs the three stages in turn and completes the
query before ``IssueQuery`` returns. A thread handoff per query costs more
than the harness's whole work for it (measured here: 86 us per null-backend
SingleStream query through a worker thread, 28 us inline).

With a backend offering ``workers()`` (one backend per GPU), each worker gets
its own loader and compute thread pulling from the same batch source, and one
completer thread serves them all. A backend offering ``stage(images, hw)``
has it called by the loader (the host-to-device copy of the next batch then
overlaps the current compute); its result goes to ``predict`` as it is.

Only compute threads call the backends. A batch that raises is retried one
sample at a time, so a single bad sample fails alone; its failure is logged
with its index and counted by the :class:`Completer`. If a stage thread dies
anyway, the pipeline closes the completer, which completes every outstanding
and every later sample with an empty response, so LoadGen never hangs.
"""
from __future__ import annotations

import copy
import logging
import queue
import threading
from typing import Any, Mapping, Protocol, Sequence

import torch

from harness.sut.completion import Completer, Sample
from harness.sut.response import to_record

log = logging.getLogger("harness")

_STOP = object()
_POLL_S = 0.1  # how often a blocked stage checks whether the pipeline stopped


class BatchSource(Protocol):
    def next_batch(self) -> list[Sample] | None:
        """Block until a batch is ready; None once the source is closed and empty."""

    def close(self) -> None:
        """Wake any waiter; after this ``next_batch`` drains what is left, then returns None."""


class QSLLike(Protocol):
    def get_batch(self, indices: Sequence[int]) -> tuple[Mapping[int, torch.Tensor], torch.Tensor]:
        """({S: uint8 Tensor[B, 3, S, S]}, int Tensor[B, 2] original (height, width))."""


def _slice(inputs: tuple[Mapping[int, torch.Tensor], torch.Tensor], i: int):
    """Sample ``i`` of a batch; a copy of the mapping, so a staged batch keeps its attributes (its copy event)."""
    images, hw = inputs
    one = copy.copy(images)
    for s, t in images.items():
        one[s] = t[i:i + 1]
    return one, hw[i:i + 1]


def backend_workers(backend: Any) -> list[Any]:
    """The backends that compute concurrently: ``backend.workers()`` when it has that, else ``[backend]``."""
    workers = getattr(backend, "workers", None)
    return list(workers()) if callable(workers) else [backend]


class Pipeline:
    """Runs batches from ``source`` through ``backend`` and completes them via ``completer``."""

    def __init__(self, backend: Any, qsl: QSLLike, completer: Completer, source: BatchSource | None,
                 threaded: bool = True, depth: int = 2, name: str = "sut") -> None:
        self.backend = backend
        self.qsl = qsl
        self.completer = completer
        self.source = source
        self.threaded = threaded
        self.name = name
        self.workers = backend_workers(backend) if threaded else [backend]
        self._depth = depth
        self._q_finish: queue.Queue = queue.Queue(maxsize=depth * len(self.workers))
        self._stopping = threading.Event()
        self._released = threading.Event()  # set by stop(): stage threads may end from then on
        self._threads: list[threading.Thread] = []
        self._inline_thread: int | None = None  # the thread whose torch thread count run_inline has set
        self.inline_busy = False                 # run_inline is computing a query (on LoadGen's thread)

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        if not self.threaded:
            return  # batches arrive through run_inline, on the caller's thread
        stages = [("completer", self._finish_loop, ())]
        for i, worker in enumerate(self.workers):
            q: queue.Queue = queue.Queue(maxsize=self._depth)
            suffix = str(i) if len(self.workers) > 1 else ""
            stages += [("loader" + suffix, self._loader_loop, (worker, q)),
                       ("compute" + suffix, self._compute_loop, (worker, q))]
        for stage, fn, args in stages:
            t = threading.Thread(target=self._guard, args=(stage, fn, *args), name=f"{self.name}-{stage}",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        """Let the stages drain what was issued, then end them."""
        if self.source is not None:
            self.source.close()
        self._released.set()
        for t in self._threads:
            t.join(timeout)
        self._stopping.set()
        self.completer.close("worker", "the SUT stopped before this sample was processed")

    # -- stage work --------------------------------------------------------------
    def _gather(self, backend: Any, indices: list[int]):
        inputs = self.qsl.get_batch(indices)
        stage = getattr(backend, "stage", None)
        return stage(*inputs) if stage is not None else inputs

    def _load(self, batch: list[Sample], backend: Any = None):
        """Gather (and stage) the batch's inputs; a batch that fails to load is retried per sample."""
        backend = self.backend if backend is None else backend
        try:
            return [(batch, self._gather(backend, [s.index for s in batch]))]
        except Exception as e:  # noqa: BLE001 - every failure is reported per sample
            if len(batch) == 1:
                self.completer.fail(batch, "load", e)
                return []
        out = []
        for s in batch:
            try:
                out.append(([s], self._gather(backend, [s.index])))
            except Exception as e:  # noqa: BLE001
                self.completer.fail([s], "load", e)
        return out

    def _compute(self, batch: list[Sample], inputs, backend: Any = None
                 ) -> list[tuple[list[Sample], list[torch.Tensor]]]:
        """Predict the batch; if it raises, predict each sample alone so only bad samples fail."""
        backend = self.backend if backend is None else backend
        try:
            dets = backend.predict(*inputs)
            if len(dets) != len(batch):
                raise RuntimeError(f"backend returned {len(dets)} results for a batch of {len(batch)}")
            return [(batch, dets)]
        except Exception as e:  # noqa: BLE001
            if len(batch) == 1:
                self.completer.fail(batch, "predict", e)
                return []
            log.warning("a batch of %d failed (%s: %s); retrying its samples one by one",
                        len(batch), type(e).__name__, e)
        out = []
        for i, s in enumerate(batch):
            try:
                dets = backend.predict(*_slice(inputs, i))
                if len(dets) != 1:
                    raise RuntimeError(f"backend returned {len(dets)} results for a batch of 1")
                out.append(([s], dets))
            except Exception as e:  # noqa: BLE001
                self.completer.fail([s], "predict", e)
        return out

    def _finish(self, batch: list[Sample], dets: list[torch.Tensor]) -> None:
        good, records = [], []
        for s, d in zip(batch, dets):
            try:
                records.append(to_record(d, s.index))
                good.append(s)
            except Exception as e:  # noqa: BLE001
                self.completer.fail([s], "record", e)
        self.completer.complete(good, records)

    # -- threads -----------------------------------------------------------------
    def _guard(self, stage: str, fn, *args) -> None:
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - a dead stage must not leave LoadGen waiting
            self._died(f"{stage} thread died", e)
        finally:
            # A thread that called into LoadGen (QuerySamplesComplete) must not end while LoadGen runs: on
            # thread exit its log buffer passes to LoadGen's logger, racing the logger's I/O thread, which
            # then crashes (SIGSEGV in TlsLogger::SwapBuffers; mlcommons/inference#440). A stage that ends
            # early (its thread died, its worker was lost) waits here until stop(), after LoadGen returned.
            self._released.wait()

    def _died(self, what: str, e: BaseException) -> None:
        """Something outside the per-sample handling failed: complete everything now, accept no more."""
        log.exception("%s (%s)", what, self.name)
        self._stopping.set()
        self.completer.close("worker", f"{what}: {type(e).__name__}: {e}")

    @staticmethod
    def _use_backend_threads(backend: Any) -> None:
        threads = getattr(backend, "threads", 0)
        if threads:  # torch's CPU thread count is per calling thread (OpenMP): set it where the model runs
            torch.set_num_threads(threads)

    def _put(self, q: queue.Queue, item) -> bool:
        while not self._stopping.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue):
        while not self._stopping.is_set():
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        return _STOP

    def run_inline(self, batch: list[Sample]) -> None:
        """Load, predict and complete ``batch`` on the calling thread (a pipeline with ``threaded=False``).

        Nothing escapes: an error outside the per-sample handling closes the
        completer, as a dying stage thread does, because the caller is
        LoadGen's issue thread, where an exception would end the process.
        """
        self.inline_busy = True
        try:
            me = threading.get_ident()
            if self._inline_thread != me:
                self._use_backend_threads(self.backend)
                self._inline_thread = me
            for part, inputs in self._load(batch):
                for done, dets in self._compute(part, inputs):
                    self._finish(done, dets)
        except BaseException as e:  # noqa: BLE001 - LoadGen must never wait for these samples
            self._died("the work on LoadGen's issue thread failed", e)
        finally:
            self.inline_busy = False

    def _loader_loop(self, backend: Any, q_compute: queue.Queue) -> None:
        while (batch := self.source.next_batch()) is not None:
            for item in self._load(batch, backend):
                if not self._put(q_compute, item):
                    return
        self._put(q_compute, _STOP)

    def _compute_loop(self, backend: Any, q_compute: queue.Queue) -> None:
        self._use_backend_threads(backend)
        while (item := self._get(q_compute)) is not _STOP:
            for done in self._compute(*item, backend):
                if not self._put(self._q_finish, done):
                    return
        self._put(self._q_finish, _STOP)

    def _finish_loop(self) -> None:
        running = len(self.workers)     # one _STOP per compute thread
        while running:
            item = self._get(self._q_finish)
            if item is _STOP:
                running -= 1
                if self._stopping.is_set():
                    return
                continue
            self._finish(*item)
