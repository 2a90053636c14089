"""Leaving the process while a LoadGen test or its SUT's threads still run.

A batch still computing after a signal keeps its thread inside torch, and
Python's teardown under such a thread aborts (``terminate called without an
active exception``, exit status 134); under a running LoadGen it may crash
(139). Every LoadGen test registers here as it starts
(harness/run/loadgen_thread.py). :func:`still_running` says whether one of
them still runs, and :func:`leave_now` ends the process with ``os._exit``
after flushing stdout, stderr and the log handlers, so nothing printed or
logged is lost. run.py calls them before it returns its exit status; for any
other program an ``atexit`` hook does, with the code of the ``SystemExit``
caught during a test (:func:`exit_code_at_exit`), else 1.

Assumption: a registered test offers ``running()`` (LoadGen or a thread of
its SUT alive) and ``loadgen_running()`` (StartTest has not returned).
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import time
from typing import Any

EXIT_WAIT_S = 5.0   # at interpreter exit, for a test still running
_POLL_S = 0.05

_running: list[Any] = []      # tests started in this process whose threads may still run
_started = [0]                # how many tests this process started
_code_at_exit = [1]


def register(test: Any) -> int:
    """Register a test as it starts; returns its number (0 for the process's first)."""
    _running.append(test)
    _started[0] += 1
    return _started[0] - 1


def tests_started() -> int:
    """How many LoadGen tests this process started (for :func:`still_running`'s ``since``)."""
    return _started[0]


def still_running(wait_s: float = 0.0, since: int = 0) -> bool:
    """Whether a test numbered ``since`` or later (or a thread of its SUT) still runs, after waiting up to
    ``wait_s`` for them to end."""
    end = time.monotonic() + wait_s
    while True:
        _running[:] = [t for t in _running if t.running()]
        mine = [t for t in _running if t.number >= since]
        if not mine or time.monotonic() >= end:
            return bool(mine)
        time.sleep(_POLL_S)


def loadgen_returned() -> bool:
    """Whether LoadGen returned in every test started in this process."""
    return not any(t.loadgen_running() for t in _running)


def exit_code_at_exit(code: int) -> None:
    """The exit status the ``atexit`` hook leaves with (a ``SystemExit``'s code, caught during a test)."""
    _code_at_exit[0] = code


def leave_now(code: int) -> None:
    """Flush stdout, stderr and the log handlers, then end the process with ``code`` at once."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(int(code))


@atexit.register
def _leave_without_teardown() -> None:
    """At interpreter exit with a test still running: give it ``EXIT_WAIT_S``, then leave without the teardown
    that would crash under it."""
    if still_running(EXIT_WAIT_S):
        leave_now(_code_at_exit[0])
