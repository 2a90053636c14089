"""One LoadGen test: ``ConstructQSL``, ``ConstructSUT``, ``StartTest`` on a helper thread, both destroyed after.

:func:`run_test` is the whole LoadGen API of a run in one place, as in
LoadGen's demos. ``StartTest`` blocks in C++, where Python cannot deliver
Ctrl-C, so it runs on a helper thread while the main thread polls; that
thread alone stops the SUT and destroys the SUT and QSL, once ``StartTest``
has returned: whatever happens on the main thread, nothing is destroyed
under a running LoadGen (which crashes it, SIGSEGV).

On Ctrl-C (and SIGTERM, which run.py turns into one) the completer is closed
(every outstanding and later sample completes at once with an empty
response), the caller is told at once (``on_interrupt``: the run folder then
says INTERRUPTED before any wait), LoadGen gets ``INTERRUPT_GRACE_S`` to
finish, and :class:`Interrupted` tells the caller whether it did; the logs
written so far stay on disk. SingleStream and MultiStream compute on
LoadGen's own thread, which cannot return before the query in flight is done:
while one is, the wait goes on, up to ``INFLIGHT_WAIT_S`` (a second Ctrl-C
stops it), so a slow model (seconds per sample on a CPU) still ends with
LoadGen's summary written. Any other exception on the main thread (a test's
timeout, an embedding program's ``SystemExit``) does the same and is
re-raised as it is.

Every test registers in harness/run/process_exit.py, which says whether one
(or a batch of its SUT stuck in torch after a signal) still runs and ends the
process without Python's teardown, which would abort under it.

Progress (``progress`` of :func:`run_test`): harness/run/run_progress.py.

A pipeline thread that dies closes the completer itself; the main thread sees
it within ``POLL_S`` and gives LoadGen ``WORKER_GRACE_S`` to finish. LoadGen
always does for Offline, SingleStream and MultiStream (their remaining
queries complete at once); a Server run paces its queries by the clock and
LoadGen 6.0.17's Python API has no abort (``AbortTest`` is not bound), so
:class:`WorkerDied` then says LoadGen is still running and the caller must
leave the process without tearing LoadGen down.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ground.errors import INTERRUPTS, ExitStatus, RunStopped
from harness.run import process_exit
from harness.run.run_progress import show_progress
from harness.sut.base import BaseSUT

log = logging.getLogger("harness")

INTERRUPT_GRACE_S = 3.0
INFLIGHT_WAIT_S = 300.0   # longest wait for a query computing on LoadGen's thread after Ctrl-C
WORKER_GRACE_S = 3.0
RELEASE_WAIT_S = 30.0     # longest wait for the SUT's threads to end once LoadGen returned
RELEASE_GRACE_S = 2.0     # the same after a signal or an exception: a batch still computing is not waited for
POLL_S = 0.2


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread where Ctrl-C would be (run.py installs the handler)."""


def interrupt_cause(e: BaseException) -> tuple[str, int]:
    """(what stopped the run, the exit status it calls for): SIGTERM 143, Ctrl-C (SIGINT) 130."""
    code = ExitStatus.TERMINATED if isinstance(e, Terminated) else ExitStatus.INTERRUPTED
    return INTERRUPTS[code], code


class Interrupted(RunStopped):
    """Ctrl-C (or SIGTERM) during a LoadGen run; ``finished`` says whether LoadGen returned in the grace period."""

    def __init__(self, finished: bool, how: str = INTERRUPTS[ExitStatus.INTERRUPTED],
                 exit_code: int = ExitStatus.INTERRUPTED) -> None:
        super().__init__(how)
        self.finished = finished
        self.how = how
        self.exit_code = exit_code


class WorkerDied(RunStopped):
    """A pipeline thread died and LoadGen did not finish within the grace period (a Server run)."""

    def __init__(self, cause: str, finished: bool) -> None:
        super().__init__(cause)
        self.cause = cause
        self.finished = finished


def wait_after_interrupt(sut: BaseSUT, done: threading.Event, grace_s: float = INTERRUPT_GRACE_S,
                         inflight_s: float = INFLIGHT_WAIT_S) -> bool:
    """Whether LoadGen ended after Ctrl-C: ``grace_s``, longer while a query computes on its thread."""
    try:
        if done.wait(grace_s):
            return True
        pipeline = getattr(sut, "pipeline", None)
        if not getattr(pipeline, "inline_busy", False):
            return False
        log.error("waiting up to %.0f s for the query being computed to finish, so that LoadGen can end "
                  "(Ctrl-C again to leave now)", inflight_s)
        end = time.monotonic() + inflight_s
        while pipeline.inline_busy and time.monotonic() < end:
            if done.wait(POLL_S):
                return True
        return done.wait(grace_s)
    except KeyboardInterrupt:   # a second Ctrl-C (or SIGTERM): stop waiting
        return done.is_set()


def worker_death(sut: BaseSUT) -> str | None:
    reason = sut.completer.closed_reason
    return reason[1] if reason is not None and reason[0] == "worker" else None


class _Test:
    """One LoadGen test: the SUT and QSL handles, and the helper thread that alone destroys them, once
    ``StartTest`` has returned (destroying them under a running LoadGen crashes it)."""

    def __init__(self, sut: BaseSUT, qsl: Any) -> None:
        import mlperf_loadgen as lg
        self.sut = sut
        self.returned = threading.Event()   # StartTest returned: LoadGen's logs are closed
        self.released = threading.Event()   # and then the SUT stopped, SUT and QSL destroyed
        self.errors: list[BaseException] = []
        self.death: str | None = None       # why a worker died, as LoadGen returned (stop() closes it too)
        self.thread: threading.Thread | None = None
        self.qsl_handle = lg.ConstructQSL(qsl.total_count, qsl.perf_count, qsl.load, qsl.unload)
        self.sut_handle = lg.ConstructSUT(sut.issue_queries, sut.flush_queries)

    def start(self, settings: Any, log_settings: Any, audit_file: Path) -> None:
        import mlperf_loadgen as lg

        def target() -> None:
            try:
                lg.StartTestWithLogSettings(self.sut_handle, self.qsl_handle, settings, log_settings,
                                            str(audit_file))
            except BaseException as e:  # noqa: BLE001 - re-raised on the main thread
                self.errors.append(e)
            finally:
                self.death = worker_death(self.sut)
                self.returned.set()
                self.release()

        self.thread = threading.Thread(target=target, name="loadgen", daemon=True)
        self.number = process_exit.register(self)
        self.thread.start()

    def release(self) -> None:
        """Stop the SUT, then destroy the SUT and the QSL; only once LoadGen returned or never started."""
        import mlperf_loadgen as lg
        try:
            self.sut.stop()
        finally:
            lg.DestroySUT(self.sut_handle)
            lg.DestroyQSL(self.qsl_handle)
            self.released.set()

    def running(self) -> bool:
        """Whether LoadGen or a thread of the SUT still runs (a stage stuck in ``predict`` after a signal)."""
        return (self.thread is not None and self.thread.is_alive()) or bool(self.sut.alive_threads())

    def loadgen_running(self) -> bool:
        return not self.returned.is_set()


def run_test(sut: BaseSUT, qsl: Any, settings: Any, log_dir: Path, audit_file: Path,
             progress: tuple[str, int | None] | None = None,
             on_interrupt: Callable[[str], None] | None = None) -> str | None:
    """One LoadGen test with its logs in ``log_dir``, the whole API in one place (as in LoadGen's demos):

        qsl_handle = lg.ConstructQSL(total, perf_count, qsl.load, qsl.unload)
        sut_handle = lg.ConstructSUT(sut.issue_queries, sut.flush_queries)
        lg.StartTestWithLogSettings(sut_handle, qsl_handle, settings, log_settings, audit_file)
        lg.DestroySUT(sut_handle); lg.DestroyQSL(qsl_handle)

    StartTest runs on a helper thread, which also destroys both once it returned; the main thread stays
    free to receive Ctrl-C and to watch the workers. ``audit_file``: the path LoadGen checks for an
    audit.config (it applies the file when it exists). ``on_interrupt(how)`` is called on Ctrl-C or
    SIGTERM once the outstanding samples are completed, before any wait (the run folder says so at once).
    Returns why a worker died during the run, or None.

    Raises Interrupted (Ctrl-C, SIGTERM), WorkerDied, LoadGen's own error; any other exception on the main
    thread (a test's timeout, an embedding program's SystemExit) completes the outstanding samples, gives
    LoadGen ``INTERRUPT_GRACE_S`` to end, and is re-raised: the SUT and QSL stay alive while LoadGen runs.
    """
    import mlperf_loadgen as lg
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(log_dir)
    log_settings.log_output.copy_summary_to_stdout = False
    log_settings.enable_trace = False
    test = _Test(sut, qsl)
    try:
        sut.start()
    except BaseException:
        test.release()    # LoadGen never started
        raise
    done = test.returned
    if progress is not None:
        threading.Thread(target=show_progress, args=(sut, done, *progress, settings), name="progress",
                         daemon=True).start()
    try:  # start() inside the try: a Ctrl-C while it returns must not escape as a bare KeyboardInterrupt
        test.start(settings, log_settings, audit_file)
        while not done.wait(POLL_S):
            cause = worker_death(sut)
            if cause is not None:
                log.error("%s; waiting up to %.0f s for LoadGen to end the run", cause, WORKER_GRACE_S)
                if not done.wait(WORKER_GRACE_S):
                    raise WorkerDied(cause, finished=False)
                break
        test.released.wait(RELEASE_WAIT_S)
    except KeyboardInterrupt as e:
        how, code = interrupt_cause(e)
        log.error("%s: completing the outstanding samples with empty responses", how)
        sut.completer.close("interrupted", f"the run was {how}")
        if on_interrupt is not None:
            with contextlib.suppress(KeyboardInterrupt):   # a second Ctrl-C: the file is written atomically
                on_interrupt(how)
        finished = wait_after_interrupt(sut, done)
        _wait_quietly(test.released, RELEASE_GRACE_S if finished else 0.0)
        raise Interrupted(finished, how, code) from None
    except WorkerDied:
        raise
    except BaseException as e:  # not Ctrl-C: a test's timeout, SystemExit from a signal handler, ...
        what = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        log.error("%s on the main thread while LoadGen runs: completing the outstanding samples with empty "
                  "responses", what)
        sut.completer.close("stopped", f"the run was stopped by {what}")
        if isinstance(e, SystemExit):
            process_exit.exit_code_at_exit(e.code if isinstance(e.code, int) else 0 if e.code is None
                                           else ExitStatus.FAILED)
        _wait_quietly(done, INTERRUPT_GRACE_S)
        _wait_quietly(test.released, RELEASE_GRACE_S if done.is_set() else 0.0)
        raise
    if test.errors:
        raise test.errors[0]
    return test.death


def _wait_quietly(event: threading.Event, seconds: float) -> bool:
    """``event.wait(seconds)``; a Ctrl-C meanwhile ends the wait (the caller is already stopping)."""
    try:
        return event.wait(seconds)
    except KeyboardInterrupt:
        return event.is_set()
