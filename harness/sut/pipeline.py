"""The worker side of every SUT: load a batch, predict, pack and complete it.

Three stages, each owned by one thread when ``threaded`` (Offline, Server):

    loader:    next batch from the SUT's batch source, ``qsl.get_batch`` (host gather)
    compute:   ``backend.predict`` (host-to-device copy, network, post-processing)
    completer: response records, one ``QuerySamplesComplete`` per batch

Queues between them let the loader gather batch n+1 and the completer pack
batch n-1 while the backend computes batch n, so the device is not idle while
results are packed. How far a worker's loader may run ahead is ``ahead``:
the batches it may have loaded beyond the one its worker computes, each
gathered into buffers of its own that are reused once it is computed (a
fresh tensor per batch costs page faults that exceed the copy). Offline
uses 1 (the next batch is ready when the device frees; more would only let
one worker hoard the query's last batches while others idle). Server uses 0:
a loader asks the batcher for a batch only when its worker is idle, so a
batch closes when a worker can take it and never waits, closed, behind
another (its samples could have joined a later batch meanwhile).

With ``threaded=False`` (SingleStream, MultiStream, where LoadGen waits for a
query before issuing the next, so there is nothing to overlap) the pipeline
starts no thread: the SUT calls ``run_inline`` on LoadGen's issue thread,
which runs the three stages in turn and completes the query before
``IssueQuery`` returns. A thread handoff per query costs more than the
harness's whole work for it (measured here: 86 us per null-backend
SingleStream query through a worker thread, 28 us inline).

With a backend offering ``workers()`` (one backend per GPU), each worker gets
its own loader and compute thread pulling from the same batch source, and one
completer thread serves them all. A backend offering ``stage(images, hw)``
has it called by the loader (the host-to-device copy of the next batch then
overlaps the current compute); its result goes to ``predict`` as it is.

Only compute threads call the backends. What each stage does with a batch is
in harness/sut/stages.py: a batch that raises goes to another worker first,
then, if it fails there too, is retried one sample at a time, so a single bad
sample fails alone; its failure is logged with its index and counted by the
:class:`Completer`. A worker whose ``predict`` or ``stage`` raises
:class:`~backends.base.WorkerLost` is retired (harness/sut/workers.py) and the
samples it had not finished go back to the batch source for the others
(inline: to the next worker at once); only when no worker is left do they
fail, and the completer closes, so every later sample completes at once. If a
stage thread dies anyway, the pipeline closes the completer, which completes
every outstanding and every later sample with an empty response, so LoadGen
never hangs.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import torch

from backends.base import WorkerLost
from harness.sut.batching import Batch, BatchSource
from harness.sut.completion import Completer, Sample
from harness.sut.stages import (
    BatchBuffers,
    Lost,
    QSLLike,
    StageWork,
    gathers_into_buffers,
)
from harness.sut.workers import Routing, Worker, WorkerPool, backend_workers

log = logging.getLogger("harness")

_STOP = object()
_POLL_S = 0.1  # how often a blocked stage checks whether the pipeline stopped


class _Closing:
    """Put on the completion queue: close the completer once the results queued before it are completed."""

    def __init__(self, why: str) -> None:
        self.why = why


class Pipeline:
    """Runs batches from ``source`` through ``backend`` and completes them via ``completer``."""

    def __init__(self, backend: Any, qsl: QSLLike, completer: Completer, source: BatchSource | None,
                 threaded: bool = True, ahead: int = 1, name: str = "sut", max_batch: int | None = None) -> None:
        self.backend = backend
        self.qsl = qsl
        self.completer = completer
        self.source = source
        self.pool = WorkerPool(backend_workers(backend))
        self.routing = Routing(self.pool, completer, self._requeue, self._close_after_queued,
                               live=source.set_live if source is not None else None)
        self.work = StageWork(qsl, completer, router=self.routing)
        self.threaded = threaded
        self.name = name
        # Every worker is in the pool; inline, the first one still running computes and the others stand by.
        self.workers = [w.backend for w in self.pool.workers] if threaded else [backend]
        self.ahead = ahead
        self.max_batch = max_batch   # the largest batch the source gives: buffers are made for it at start()
        # Per worker, a slot for each batch it may hold (computing + ahead): the loader takes one before it
        # asks the source for a batch and gathers into its buffers; the compute thread returns it once the
        # batch is computed. Without a QSL that gathers into buffers, the slots are plain credits (None).
        reuse = gathers_into_buffers(qsl)
        self._slots: list[queue.Queue] = []
        for _ in self.pool.workers:
            free: queue.Queue = queue.Queue()
            for _ in range(1 + ahead):
                free.put(BatchBuffers(qsl.sizes, getattr(qsl, "pin_memory", False)) if reuse else None)
            self._slots.append(free)
        self._q_finish: queue.Queue = queue.Queue(maxsize=2 * len(self.workers))
        self._stopping = threading.Event()
        self._released = threading.Event()  # set by stop(): stage threads may end from then on
        self._threads: list[threading.Thread] = []
        self._inline_key: tuple[int, int] | None = None  # (thread, worker) whose torch thread count is set
        self._inline_todo: list[tuple[list[Sample], Batch | None]] = []   # run_inline's work left
        self.inline_busy = False                 # run_inline is computing a query (on LoadGen's thread)

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        if not self.threaded:
            return  # batches arrive through run_inline, on the caller's thread
        self.source.set_live(w.index for w in self.pool.workers)
        self._prepare_buffers()
        stages = [("completer", self._finish_loop, ())]
        for w in self.pool.workers:
            q: queue.Queue = queue.Queue()   # at most 1 + ahead items: the slots bound it
            suffix = str(w.index) if len(self.pool.workers) > 1 else ""
            stages += [("loader" + suffix, self._loader_loop, (w, q)),
                       ("compute" + suffix, self._compute_loop, (w, q))]
        for stage, fn, args in stages:
            t = threading.Thread(target=self._guard, args=(stage, fn, *args), name=f"{self.name}-{stage}",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def _prepare_buffers(self) -> None:
        """Make (and touch) every slot's buffers for ``max_batch`` now, before LoadGen times anything: on
        first touch each page of fresh memory faults, which costs about twice the copy that fills it."""
        if self.max_batch is None:
            return
        for free in self._slots:
            for buffers in list(free.queue):
                if buffers is not None:
                    for t in buffers.take(self.max_batch).values():
                        t.zero_()

    def _requeue(self, batch: Batch) -> bool:
        """Where Routing sends a batch for another worker: the source, or inline the query's work left."""
        if not self.threaded:
            self._inline_todo.append((batch.samples, batch))
            return True
        return self.source.requeue(batch)

    def _close_after_queued(self, why: str) -> None:
        """Close the completer, threaded after the results already queued for completion (they keep them)."""
        if self.threaded:
            self._put(self._q_finish, _Closing(why))
        else:
            self.completer.close("worker", why)

    def stop(self, timeout: float = 30.0) -> None:
        """Let the stages drain what was issued, then end them."""
        if self.source is not None:
            self.source.close()
        self._released.set()
        for t in self._threads:
            t.join(timeout)
        self._stopping.set()
        self.completer.close("worker", "the SUT stopped before this sample was processed")

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

        It runs on the first worker still running; what a lost worker left undone, or a batch that raised,
        runs on the next. Nothing escapes: an error outside the per-sample handling closes the completer,
        as a dying stage thread does, because the caller is LoadGen's issue thread, where an exception
        would end the process.
        """
        self.inline_busy = True
        try:
            todo = self._inline_todo = [(batch, None)]
            while todo:
                samples, whole = todo.pop()
                w = self._inline_worker(whole)
                if w is None:
                    break
                key = (threading.get_ident(), w.index)
                if self._inline_key != key:
                    self._use_backend_threads(w.backend)
                    self._inline_key = key
                try:
                    lost = self.work.compute_parts(w, self.work.load(samples, w.backend), self.work.finish, whole)
                except Lost as e:
                    lost = e
                if lost is not None:
                    self.routing.retire(w, lost.cause, lost.leftover)   # what is left joins ``todo``
        except BaseException as e:  # noqa: BLE001 - LoadGen must never wait for these samples
            self._died("the work on LoadGen's issue thread failed", e)
        finally:
            self.inline_busy = False

    def _inline_worker(self, batch: Batch | None) -> Worker | None:
        """The first worker still running, other than the one ``batch`` failed on while there is one."""
        live = self.pool.live()
        first = live[0] if live else None
        if first is None or batch is None or batch.failed_on != first.index:
            return first
        return next((w for w in live if w.index != batch.failed_on), first)

    def _slot(self, w: Worker):
        """Wait until ``w`` may hold one more batch: its buffers (None without reuse), or _STOP when the
        pipeline stops or ``w`` is retired."""
        free = self._slots[w.index]
        while not (self._stopping.is_set() or w.retired):
            try:
                return free.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        return _STOP

    def _ready(self, w: Worker) -> bool:
        """Wait, between batches, until ``w`` takes one: a backend with ``wait_ready`` (a remote worker whose
        process restarts) may hold off; False when the pipeline stops, or ``w`` is lost (it is retired)."""
        wait_ready = getattr(w.backend, "wait_ready", None)
        if wait_ready is None:
            return True
        while not (self._released.is_set() or w.retired):
            try:
                if wait_ready(_POLL_S):
                    return True
            except WorkerLost as e:
                self.routing.retire(w, e, [])
                return False
        return False

    def _loader_loop(self, w: Worker, q_compute: queue.Queue) -> None:
        while ((slot := self._slot(w)) is not _STOP and self._ready(w)
               and (batch := self.source.next_batch(w.index)) is not None):
            if w.retired:                   # lost while this loader waited
                self.routing.hand_back(batch.samples)
                break
            try:
                parts = self.work.load(batch.samples, w.backend, slot)
            except Lost as lost:
                self.routing.retire(w, lost.cause, lost.leftover)
                break
            if not self._put(q_compute, (batch, parts, slot)):
                return
        self._put(q_compute, _STOP)

    def _compute_loop(self, w: Worker, q_compute: queue.Queue) -> None:
        self._use_backend_threads(w.backend)
        free = self._slots[w.index]
        while (item := self._get(q_compute)) is not _STOP:
            batch, parts, slot = item
            if w.retired:                   # loaded before this worker was lost: for the others
                self.routing.hand_back(batch.samples)
                free.put(slot)
                continue
            timed = None if batch.requeued else batch   # a batch's service time, first attempt and whole

            def emit(samples: list[Sample], dets: list[torch.Tensor]) -> None:
                whole = timed if timed is not None and len(samples) == len(timed.samples) else None
                self._put(self._q_finish, (samples, dets, whole))

            lost = self.work.compute_parts(w, parts, emit, batch)
            free.put(slot)                  # predict returned: its inputs may be overwritten
            if lost is not None:
                self.routing.retire(w, lost.cause, lost.leftover)
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
            samples, dets, whole = item
            self.work.finish(samples, dets)
            if whole is not None:
                self.source.batch_done(len(samples), time.monotonic() - whole.closed_at)
