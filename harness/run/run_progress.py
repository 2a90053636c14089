"""Progress of a LoadGen run: completed samples against the number the run will issue.

On a terminal a bar with the time left, else one log line every few seconds (ground/progress.py). For a
performance run that number is estimated from the settings as LoadGen 6.0.17 plans the run
(:func:`planned_samples`): Offline issues one query of max(min_query_count, 1.1 x min_duration x expected
QPS) samples; Server max(min_query_count, min_duration x target QPS) queries; SingleStream and MultiStream
issue queries until both min_query_count and min_duration are reached, so their estimate follows the
measured rate, and none of the last three ends before min_duration.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from ground.progress import Progress
from harness.sut.base import BaseSUT

log = logging.getLogger("harness")


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


def show_progress(sut: BaseSUT, done: threading.Event, desc: str, total: int | None, settings: Any) -> None:
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
