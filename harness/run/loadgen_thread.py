"""LoadGen's ``StartTest`` on a helper thread, watched from the main thread.

``StartTest`` blocks in C++, where Python cannot deliver Ctrl-C, so it runs on
a helper thread while the main thread polls. On Ctrl-C (and SIGTERM, which
run.py turns into one) the completer is closed (every outstanding and later
sample completes at once with an empty response), LoadGen gets
``INTERRUPT_GRACE_S`` to finish, and :class:`Interrupted` tells the caller
whether it did; the logs written so far stay on disk. SingleStream and
MultiStream compute on LoadGen's own thread, which cannot return before the
query in flight is done: while one is, the wait goes on, up to
``INFLIGHT_WAIT_S`` (a second Ctrl-C stops it), so a slow model (seconds per
sample on a CPU) still ends with LoadGen's summary written.

Progress (``progress`` of :func:`start_test`): completed samples against the
number the run will issue, on a terminal as a bar with the time left, else one
log line every few seconds (ground/progress.py). For a performance run
that number is estimated from the settings as LoadGen 6.0.17 plans the run
(:func:`planned_samples`): Offline issues one query of
max(min_query_count, 1.1 x min_duration x expected QPS) samples; Server
max(min_query_count, min_duration x target QPS) queries; SingleStream and
MultiStream issue queries until both min_query_count and min_duration are
reached, so their estimate follows the measured rate, and none of the last
three ends before min_duration.

A pipeline thread that dies closes the completer itself; the main thread sees
it within ``POLL_S`` and gives LoadGen ``WORKER_GRACE_S`` to finish. LoadGen
always does for Offline, SingleStream and MultiStream (their remaining
queries complete at once); a Server run paces its queries by the clock and
LoadGen 6.0.17's Python API has no abort (``AbortTest`` is not bound), so
:class:`WorkerDied` then says LoadGen is still running and the caller must
leave the process without tearing LoadGen down.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from ground.errors import INTERRUPTS, ExitStatus, RunStopped
from ground.progress import Progress
from harness.sut.base import BaseSUT

log = logging.getLogger("harness")

INTERRUPT_GRACE_S = 3.0
INFLIGHT_WAIT_S = 300.0   # longest wait for a query computing on LoadGen's thread after Ctrl-C
WORKER_GRACE_S = 3.0
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


def planned_samples(settings: Any, elapsed_s: float, completed: int) -> tuple[int | None, float | None]:
    """(samples a performance run will have issued, least seconds it still lasts), from LoadGen's settings.

    ``completed`` samples in ``elapsed_s`` give SingleStream's and MultiStream's rate. (None, None) for a
    find-peak search, whose length depends on what it finds.
    """
    import mlperf_loadgen as lg
    if settings.mode == lg.TestMode.FindPeakPerformance:
        return None, None
    duration = settings.min_duration_ms / 1e3
    left = max(0.0, duration - elapsed_s)
    scenario = settings.scenario
    if scenario == lg.TestScenario.Offline:
        return max(settings.min_query_count, int(1.1 * duration * settings.offline_expected_qps)), None
    if scenario == lg.TestScenario.Server:
        return max(settings.min_query_count, math.ceil(duration * settings.server_target_qps)), left
    per_query = settings.multi_stream_samples_per_query if scenario == lg.TestScenario.MultiStream else 1
    if completed and elapsed_s > 0:
        queries = completed / per_query + completed / per_query / elapsed_s * left
    else:
        expected_ns = settings.multi_stream_expected_latency_ns if per_query > 1 \
            else settings.single_stream_expected_latency_ns
        queries = duration / max(expected_ns / 1e9, 1e-9)
    return per_query * max(settings.min_query_count, math.ceil(queries)), left


def _show_progress(sut: BaseSUT, done: threading.Event, desc: str, total: int | None, settings: Any) -> None:
    """Completed samples against the run's (planned) total, polled twice a second, until ``done`` is set.

    ``total`` None (a performance run): planned from ``settings`` (:func:`planned_samples`).
    """
    t0 = time.monotonic()
    floor = None if total is not None else (lambda elapsed: planned_samples(settings, elapsed, 0)[1] or 0.0)
    bar = Progress(desc, total=total, unit="samples", floor_s=floor, logger=log)
    finished = False
    try:
        while not finished:
            finished = done.wait(0.5)
            c = sut.completer
            answered = c.completed + len(c.failures)
            if total is None and not finished:
                bar.set_total(planned_samples(settings, time.monotonic() - t0, answered)[0])
            bar.set(answered)
    finally:   # the last line counts the samples computed, not those answered empty (after Ctrl-C, say)
        c = sut.completer
        if finished:
            bar.set(c.completed)
        empty = len(c.failures)
        why = f" ({c.closed_reason[1]})" if c.closed_reason else ""
        bar.close(done=finished, note=f"{empty} more answered empty{why}" if empty else "")


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


def start_test(sut: BaseSUT, qsl_handle: int, settings: Any, log_settings: Any, audit_file: Path,
                progress: tuple[str, int | None] | None = None) -> None:
    """Run LoadGen on a helper thread; the main thread stays free to receive Ctrl-C and to watch the workers.

    ``audit_file``: the path LoadGen checks for an audit.config (it applies the file when it exists).
    """
    import mlperf_loadgen as lg
    done = threading.Event()
    if progress is not None:
        threading.Thread(target=_show_progress, args=(sut, done, *progress, settings), name="progress",
                         daemon=True).start()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            lg.StartTestWithLogSettings(sut.handle, qsl_handle, settings, log_settings, str(audit_file))
        except BaseException as e:  # noqa: BLE001 - re-raised on the main thread
            errors.append(e)
        finally:
            done.set()

    loadgen = threading.Thread(target=target, name="loadgen", daemon=True)
    try:  # start() inside the try: a Ctrl-C while it returns must not escape as a bare KeyboardInterrupt
        loadgen.start()
        while not done.wait(POLL_S):
            cause = worker_death(sut)
            if cause is not None:
                log.error("%s; waiting up to %.0f s for LoadGen to end the run", cause, WORKER_GRACE_S)
                if not done.wait(WORKER_GRACE_S):
                    raise WorkerDied(cause, finished=False)
                break
    except KeyboardInterrupt as e:
        how, code = interrupt_cause(e)
        log.error("%s: completing the outstanding samples with empty responses", how)
        sut.completer.close("interrupted", f"the run was {how}")
        raise Interrupted(wait_after_interrupt(sut, done), how, code) from None
    if errors:
        raise errors[0]
