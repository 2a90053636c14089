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

Only compute threads call the backends. What each stage does with a batch is
in harness/sut/stages.py: a batch that raises is retried one sample at a
time, so a single bad sample fails alone; its failure is logged with its index
and counted by the :class:`Completer`. A worker whose
``predict`` or ``stage`` raises :class:`~backends.base.WorkerLost` is retired
(harness/sut/workers.py) and the samples it had not finished go back to the
batch source for the others (inline: to the next worker at once); only when
no worker is left do they fail, and the completer closes, so every later
sample completes at once. If a stage thread dies anyway, the pipeline closes
the completer, which completes every outstanding and every later sample with
an empty response, so LoadGen never hangs.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Iterable, Protocol

import torch

from backends.base import WorkerLost
from harness.sut.batching import Batch
from harness.sut.completion import Completer, Sample
from harness.sut.stages import Lost, QSLLike, StageWork
from harness.sut.workers import Worker, WorkerPool

log = logging.getLogger("harness")

_STOP = object()
_POLL_S = 0.1  # how often a blocked stage checks whether the pipeline stopped

class BatchSource(Protocol):
    def next_batch(self, worker: int = 0) -> Batch | None:
        """Block until a batch is ready for ``worker``; None once closed and empty, or the worker is retired."""

    def requeue(self, batch: Batch) -> None:
        """Take back a batch a worker could not compute; it goes out first, to another worker."""

    def set_live(self, workers: Iterable[int]) -> None:
        """The workers still running (by index)."""

    def close(self) -> None:
        """Wake any waiter; after this ``next_batch`` drains what is left, then returns None."""


class _Closing:
    """Put on the completion queue: close the completer once the results queued before it are completed."""

    def __init__(self, why: str) -> None:
        self.why = why


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
        self.work = StageWork(qsl, completer)
        self.threaded = threaded
        self.name = name
        # Every worker; inline, the first one still running computes and the others stand by.
        self.pool = WorkerPool(backend_workers(backend))
        self.workers = [w.backend for w in self.pool.workers] if threaded else [backend]
        self._depth = depth
        self._q_finish: queue.Queue = queue.Queue(maxsize=depth * len(self.workers))
        self._stopping = threading.Event()
        self._released = threading.Event()  # set by stop(): stage threads may end from then on
        self._threads: list[threading.Thread] = []
        self._inline_key: tuple[int, int] | None = None  # (thread, worker) whose torch thread count is set
        self.inline_busy = False                 # run_inline is computing a query (on LoadGen's thread)

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        if not self.threaded:
            return  # batches arrive through run_inline, on the caller's thread
        stages = [("completer", self._finish_loop, ())]
        for w in self.pool.workers:
            q: queue.Queue = queue.Queue(maxsize=self._depth)
            suffix = str(w.index) if len(self.pool.workers) > 1 else ""
            stages += [("loader" + suffix, self._loader_loop, (w, q)),
                       ("compute" + suffix, self._compute_loop, (w, q))]
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
    # -- lost workers ------------------------------------------------------------
    def _retire(self, w: Worker, cause: WorkerLost, samples: list[Sample]) -> bool:
        """Retire the lost worker ``w``. True when workers are left to take ``samples``; otherwise they
        fail, and so does every other outstanding and later sample (the completer closes)."""
        left = self.pool.retire(w, f"{type(cause).__name__}: {cause}")
        if self.source is not None:
            self.source.set_live(x.index for x in self.pool.live())
        if left:
            return True
        self.completer.fail(samples, "predict", cause)
        why = f"no worker is left: the last one was lost ({type(cause).__name__}: {cause})"
        if self.threaded:     # after what was computed and queued for completion: those keep their results
            self._put(self._q_finish, _Closing(why))
        else:
            self.completer.close("worker", why)
        return False

    def _hand_back(self, samples: list[Sample]) -> None:
        """Give the samples not completed yet back to the source, for the workers still running."""
        pending = self.completer.pending(samples)
        if pending:
            self.source.requeue(Batch(pending))

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

        It runs on the first worker still running; when that one is lost, what it left undone runs on the
        next. Nothing escapes: an error outside the per-sample handling closes the completer, as a dying
        stage thread does, because the caller is LoadGen's issue thread, where an exception would end the
        process.
        """
        self.inline_busy = True
        try:
            todo = batch
            while todo:
                w = self.pool.first_live()
                if w is None:
                    break
                key = (threading.get_ident(), w.index)
                if self._inline_key != key:
                    self._use_backend_threads(w.backend)
                    self._inline_key = key
                try:
                    lost = self.work.compute_parts(w, self.work.load(todo, w.backend), self.work.finish)
                except Lost as e:
                    lost = e
                todo = []
                if lost is not None and self._retire(w, lost.cause, lost.leftover):
                    todo = self.completer.pending(lost.leftover)
        except BaseException as e:  # noqa: BLE001 - LoadGen must never wait for these samples
            self._died("the work on LoadGen's issue thread failed", e)
        finally:
            self.inline_busy = False

    def _loader_loop(self, w: Worker, q_compute: queue.Queue) -> None:
        while not w.retired and (batch := self.source.next_batch(w.index)) is not None:
            if w.retired:                   # lost while this loader waited
                self._hand_back(batch.samples)
                break
            try:
                parts = self.work.load(batch.samples, w.backend)
            except Lost as lost:
                if self._retire(w, lost.cause, lost.leftover):
                    self._hand_back(lost.leftover)
                break
            if not self._put(q_compute, (batch, parts)):
                return
        self._put(q_compute, _STOP)

    def _compute_loop(self, w: Worker, q_compute: queue.Queue) -> None:
        self._use_backend_threads(w.backend)

        def emit(samples: list[Sample], dets: list[torch.Tensor]) -> None:
            self._put(self._q_finish, (samples, dets))

        while (item := self._get(q_compute)) is not _STOP:
            batch, parts = item
            if w.retired:                   # loaded before this worker was lost: for the others
                self._hand_back(batch.samples)
                continue
            lost = self.work.compute_parts(w, parts, emit)
            if lost is not None and self._retire(w, lost.cause, lost.leftover):
                self._hand_back(lost.leftover)
        self._put(self._q_finish, _STOP)

    def _finish_loop(self) -> None:
        running = len(self.pool.workers)     # one _STOP per compute thread
        while running:
            item = self._get(self._q_finish)
            if item is _STOP:
                running -= 1
                if self._stopping.is_set():
                    return
                continue
            if isinstance(item, _Closing):
                self.completer.close("worker", item.why)
                continue
            self.work.finish(*item)
