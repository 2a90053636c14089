"""The worker side of every SUT: load a batch, compute it, complete it.

A sample's path: ``BaseSUT.issue_queries`` (base.py) -> the scenario's batches
(offline.py, server.py; batching.py) -> this file's stages -> stages.py (load,
predict) -> ``Completer.complete_detections`` (completion.py). Three stages,
each on its own thread when ``threaded`` (Offline, Server):

    loader:    next batch from the SUT's batch source, ``StageWork.load`` (host gather, ``stage``)
    compute:   ``StageWork.compute`` (``backend.predict``)
    completer: ``Completer.complete_detections`` (records, one ``QuerySamplesComplete`` per batch)

The loader gathers batch n+1 and the completer packs batch n-1 while the backend computes batch n.
``ahead``: the batches a worker's loader may hold beyond the one it computes, each in buffers of its own,
reused (stages.Slots). Offline uses 1; Server 0, so a batch closes only when a worker can take it. With
``threaded=False`` (SingleStream, MultiStream: nothing to overlap) ``run_inline`` runs the stages on
LoadGen's issue thread, cheaper than a handoff (86 us per null-backend query via a thread, 28 inline).

Each of a backend's ``workers()`` (two per GPU) gets its own loader and
compute thread on the same source; one completer thread serves them all.
Where a batch goes when a worker fails or is lost: workers.py. ``deadline_s``:
the longest one ``predict`` may take; a worker past it is retired as lost (its
thread, a daemon, is abandoned) and its samples go to the others; inline, it
holds LoadGen's thread, so the completer closes (as for a dead worker). A
stage thread that dies closes the completer: every outstanding and later
sample completes at once, empty, so LoadGen never hangs. ``stop`` waits a
bounded time, so a stuck ``predict`` never holds the process.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from backends.base import WorkerLost
from harness.sut.batching import Batch, BatchSource, WorkLeft
from harness.sut.completion import Completer, Sample
from harness.sut.stages import Lost, QSLLike, Slots, StageWork, use_backend_threads, wait_ready
from harness.sut.workers import Routing, Worker, WorkerPool, backend_workers

log = logging.getLogger("harness")

_STOP = object()
_POLL_S = 0.1  # how often a blocked stage checks whether the pipeline stopped
_END_S = 1.0   # how long stop() waits for the stage threads once nothing is left to drain


class _Closing(str):
    """Put on the completion queue: close the completer (for this reason) once the results before it are completed."""


class Pipeline:
    """Runs batches from ``source`` through ``backend`` and completes them via ``completer``."""

    def __init__(self, backend: Any, qsl: QSLLike, completer: Completer, source: BatchSource | None,
                 threaded: bool = True, ahead: int = 1, name: str = "sut", max_batch: int | None = None,
                 deadline_s: float | None = None) -> None:
        self.qsl = qsl
        self.completer = completer
        self.source = source
        self.pool = WorkerPool(backend_workers(backend))
        self._left = WorkLeft()
        self.routing = Routing(self.pool, completer, source if threaded else self._left)
        self.work = StageWork(qsl, completer, self.routing)
        self.threaded = threaded
        self.name = name
        # Every worker is in the pool; inline, the first one still running computes and the others stand by.
        self.workers = [w.backend for w in self.pool.workers] if threaded else [backend]
        self.ahead = ahead
        self.max_batch = max_batch   # the largest batch the source gives: buffers are made for it at start()
        self.deadline_s = deadline_s
        self.slots = Slots(qsl, len(self.pool.workers), ahead)
        self._q_compute = [queue.Queue() for _ in self.pool.workers]   # at most 1 + ahead items: the slots bound it
        self._q_finish: queue.Queue = queue.Queue(maxsize=2 * len(self.workers))
        self._stopping = threading.Event()
        self._released = threading.Event()  # set by stop(): stage threads may end from then on
        self._threads: list[threading.Thread] = []
        self._inline_key: tuple[int, int] | None = None  # (thread, worker) whose torch thread count is set
        self.inline_busy = False                 # run_inline is computing a query (on LoadGen's thread)

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        stages = []    # inline, batches arrive through run_inline, on the caller's thread
        if self.threaded:
            self.source.set_live(w.index for w in self.pool.workers)
            if self.max_batch is not None:
                self.slots.prepare(self.max_batch)
            stages.append(("completer", self._finish_loop, ()))
        for w in self.pool.workers if self.threaded else ():
            suffix = str(w.index) if len(self.pool.workers) > 1 else ""
            stages += [("loader" + suffix, self._loader_loop, (w,)), ("compute" + suffix, self._compute_loop, (w,))]
        if self.deadline_s is not None:
            stages.append(("deadline", self._deadline_loop, ()))
        for stage, fn, args in stages:
            t = threading.Thread(target=self._guard, args=(stage, fn, *args), name=f"{self.name}-{stage}",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        """Let the stages drain what was issued (at most ``timeout`` seconds), then end them (a bounded wait:
        a thread stuck in a backend is a daemon and is left behind)."""
        if self.source is not None:
            self.source.close()
        self._released.set()
        end = time.monotonic() + timeout
        while self.completer.outstanding and any(t.is_alive() for t in self._threads) and time.monotonic() < end:
            time.sleep(0.01)
        self._stopping.set()
        end = time.monotonic() + _END_S
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        self.completer.close("worker", "the SUT stopped before this sample was processed")

    def alive_threads(self) -> list[threading.Thread]:
        return [t for t in self._threads if t.is_alive()]

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

    def _retire(self, w: Worker, lost: Lost) -> None:
        """Retire ``w`` (or its device) and hand on what it left; with no worker left, close the completer
        (threaded: after the results already queued, which keep them)."""
        if self.routing.retire(w, lost.cause, lost.leftover):
            return
        why = f"no worker is left: the last one was lost ({type(lost.cause).__name__}: {lost.cause})"
        if self.threaded:
            self._put(self._q_finish, _Closing(why))
        else:
            self.completer.close("worker", why)

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

    def run_inline(self, samples: list[Sample]) -> None:
        """Load, predict and complete ``samples`` on the calling thread (a pipeline with ``threaded=False``).

        It runs on the first worker still running; what a lost worker left undone, or a batch that raised,
        runs on the next (one on another device first). Nothing escapes: an error outside the per-sample
        handling closes the completer, as a dying stage thread does, because the caller is LoadGen's issue
        thread, where an exception would end the process.
        """
        self.inline_busy = True
        try:
            todo = self._left.todo = [Batch(samples)]
            while todo:
                batch = todo.pop()
                w = self.pool.first(avoid=batch.avoid)
                if w is None:
                    break
                key = (threading.get_ident(), w.index)
                if self._inline_key != key:
                    use_backend_threads(w.backend)
                    self._inline_key = key
                try:
                    done, lost = self.work.compute(w, self.work.load(batch.samples, w.backend), batch)
                except Lost as e:
                    done, lost = [], e
                for part, dets in done:
                    self.completer.complete_detections(part, dets)
                if lost is not None:
                    self._retire(w, lost)   # what is left joins ``todo``
        except BaseException as e:  # noqa: BLE001 - LoadGen must never wait for these samples
            self._died("the work on LoadGen's issue thread failed", e)
        finally:
            self.inline_busy = False

    def _ready(self, w: Worker) -> bool:
        """``wait_ready`` between batches; a worker that will never be ready (WorkerLost) is retired."""
        try:
            return not w.retired and wait_ready(w.backend, self._released, _POLL_S)
        except WorkerLost as e:
            self._retire(w, Lost(e, []))
            return False

    def _loader_loop(self, w: Worker) -> None:
        q_compute = self._q_compute[w.index]
        while True:
            ok, slot = self.slots.take(w, self._stopping, _POLL_S)
            if not ok or not self._ready(w) or (batch := self.source.next_batch(w.index)) is None:
                break
            if w.retired:                   # lost while this loader waited
                self.routing.hand_back(batch)
                break
            try:
                parts = self.work.load(batch.samples, w.backend, slot)
            except Lost as lost:
                self._retire(w, lost)
                break
            if not self._put(q_compute, (batch, parts, slot)):
                return
        self._put(q_compute, _STOP)

    def _compute_loop(self, w: Worker) -> None:
        use_backend_threads(w.backend)
        while (item := self._get(self._q_compute[w.index])) is not _STOP:
            batch, parts, slot = item
            if w.retired:                   # loaded before this worker was lost: for the others
                self.routing.hand_back(batch)
                self.slots.give(w.index, slot)
                continue
            done, lost = self.work.compute(w, parts, batch)
            self.slots.give(w.index, slot)  # predict returned: its inputs may be overwritten
            timed = None if batch.requeued else batch   # a batch's service time, first attempt and whole
            for samples, dets in done:      # after a missed deadline too: the completer completes each sample once
                whole = timed if timed is not None and len(samples) == len(timed.samples) else None
                self._put(self._q_finish, (samples, dets, whole))
            if lost is not None:
                self._retire(w, lost)
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
                self.completer.close("worker", str(item))
                continue
            samples, dets, whole = item
            self.completer.complete_detections(samples, dets)
            if whole is not None:
                self.source.batch_done(len(samples), time.monotonic() - whole.closed_at)

    def _deadline_loop(self) -> None:
        """Retire a worker whose ``predict`` runs past ``deadline_s``; its samples, and the batches loaded for
        it, go to the others."""
        while not self._stopping.wait(min(self.deadline_s / 4, 0.5)):
            now = time.monotonic()
            for w in self.pool.live():
                since = w.busy_since
                if since is None or now - since <= self.deadline_s:
                    continue
                if not self.threaded:
                    self._abandon_inline(w)
                    continue
                held = list(w.holding)
                cause = WorkerLost(f"its predict took more than the {self.deadline_s:g} s deadline "
                                   f"(a batch of {len(held)}); the call is abandoned")
                self._retire(w, Lost(cause, held))
                self._hand_back_loaded(w)

    def _abandon_inline(self, w: Worker) -> None:
        """A predict on LoadGen's issue thread passed the deadline: LoadGen cannot issue another query while
        it runs, so the run ends as with a dead worker (every sample completes; the caller leaves LoadGen)."""
        why = (f"a predict on LoadGen's issue thread took more than the {self.deadline_s:g} s deadline; "
               "LoadGen cannot go on while it runs")
        self.pool.retire([w], "its predict was abandoned")
        self.inline_busy = False         # nothing to wait for after Ctrl-C: the call is abandoned
        self.completer.close("worker", why)

    def _hand_back_loaded(self, w: Worker) -> None:
        """Hand the batches loaded for the retired ``w`` to the others (its compute thread may never return)."""
        q = self._q_compute[w.index]
        while True:
            try:
                item = q.get_nowait()
            except queue.Empty:
                return
            if item is _STOP:
                q.put(_STOP)
                return
            batch, _, slot = item
            self.routing.hand_back(batch)
            self.slots.give(w.index, slot)
