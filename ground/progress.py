"""Progress of a long job, readable on a terminal and in a log file alike.

On a terminal a tqdm bar shows the count, the total, the rate and the time
left. When stderr is not a terminal (output redirected, a CI job, ``nohup``)
a bar would write carriage returns into the log, so one line is logged every
``LOG_EVERY_S`` seconds instead, e.g.
``prepare 300/600: 1200/5000 images (24%), 41 s, about 2 min left``, and one
when the job ends. The lines come from a heartbeat thread, so they keep coming
while no item completes (a batch that takes minutes on a slow CPU); an update
made when a line is due logs it at once; ``every_s`` 0 logs every update and
starts no thread. The time left is measured from the rate since the start
(items that were already done when it started, such as a resumed
preparation, do not count), and can be given a floor by the caller (LoadGen
runs never end before their minimum duration).
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Callable, TextIO

LOG_EVERY_S = 5.0


def duration(seconds: float) -> str:
    """'42 s', '3.5 min' or '1.2 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Count completed items of a job of ``total`` (None = unknown) items; a context manager."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "images", initial: int = 0,
                 enabled: bool = True, logger: logging.Logger | None = None, every_s: float | None = None,
                 stream: TextIO | None = None, floor_s: Callable[[float], float] | None = None) -> None:
        """``floor_s(elapsed)``: the least time the job can still take (a minimum duration), or None."""
        self.desc, self.total, self.unit, self.n = desc, total, unit, initial
        self._initial, self._floor = initial, floor_s
        self._every = LOG_EVERY_S if every_s is None else every_s
        self._log = logger or logging.getLogger("harness")
        self._t0 = self._last = time.monotonic()
        stream = stream or sys.stderr
        self._bar = None
        self._enabled = enabled
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if enabled and getattr(stream, "isatty", lambda: False)():
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit.rstrip("s") or unit, file=stream,
                             smoothing=0.1, mininterval=0.5, leave=False, dynamic_ncols=True)
        elif enabled and self._every > 0:
            threading.Thread(target=self._heartbeat, name=f"progress {desc}", daemon=True).start()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close(done=exc[0] is None)

    def set_total(self, total: int | None) -> None:
        """Change the expected total (an estimate that improves as the job runs)."""
        if total == self.total:
            return
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def update(self, n: int = 1) -> None:
        self.set(self.n + n)

    def set(self, n: int) -> None:
        """Set the count of completed items."""
        if n == self.n:
            return
        if self._bar is not None:
            self._bar.update(n - self.n)
            if self._floor is not None:
                self._bar.set_postfix_str(f"at least {duration(self._floor(self.elapsed))} left", refresh=False)
        self.n = n
        if self._bar is None:
            self._log_if_due()

    def _log_if_due(self) -> None:
        with self._lock:
            due = self._enabled and time.monotonic() - self._last >= self._every
            if due:
                self._last = time.monotonic()
        if due:
            self._log.info("%s", self.line())

    def _heartbeat(self) -> None:
        """A line whenever none was logged for ``every_s``, until closed."""
        while not self._stop.wait(max(0.0, self._last + self._every - time.monotonic())):
            self._log_if_due()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def left_s(self) -> float | None:
        """Estimated seconds left: the rate so far over what remains, never below the caller's floor."""
        elapsed, done = self.elapsed, self.n - self._initial
        estimate = None
        if self.total is not None and done > 0:
            estimate = elapsed / done * max(0, self.total - self.n)
        if self._floor is not None:
            estimate = max(estimate or 0.0, self._floor(elapsed))
        return estimate

    def line(self) -> str:
        """``desc: n/total unit (p%), elapsed, about t left``."""
        count = f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)" if self.total \
            else f"{self.n} {self.unit}"
        left = self.left_s()
        tail = f", about {duration(left)} left" if left is not None else ""
        return f"{self.desc}: {count}, {duration(self.elapsed)}{tail}"

    def close(self, done: bool = True, note: str = "") -> None:
        """End the job: the bar goes, or the last line says how many items took how long, then ``note``."""
        self._stop.set()
        with self._lock:
            enabled, self._enabled = self._enabled, False
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif enabled and done and (self.n > self._initial or note):
            self._log.info("%s: %d %s in %s%s", self.desc, self.n - self._initial, self.unit, duration(self.elapsed),
                           f"; {note}" if note else "")
