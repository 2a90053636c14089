"""One writer per cache folder, across processes.

Two runs started at once on the same data (a SingleStream and an Offline run
side by side, or two jobs of a CI matrix) would otherwise both write the same
``*.partial`` arrays and delete each other's files. Preparation holds an
exclusive ``flock`` on ``<cache>/.prepare.lock`` while it writes; a second
process logs that it waits, for whom (the holder writes its pid into the file),
and then re-checks the folder, usually finding the cache ready. The lock
itself is ``ground/files.py``'s, also used for run folders.

Assumptions: a POSIX file system with ``flock`` (Linux, macOS; on NFS flock
may be local to one machine). The kernel drops the lock when its holder
exits, also on a crash or ``kill -9``, so a lock is never stale. Readers take
no lock: a rebuild never changes a finished array in place (old files are
unlinked and new ones renamed in), so a running benchmark's memory maps stay valid.
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ground.files import open_lock, take

log = logging.getLogger("qsl")

LOCK_NAME = ".prepare.lock"
POLL_S = 0.25   # how often a waiting process retries (a sleep, so Ctrl-C stays prompt)


@contextmanager
def cache_lock(cache_dir: Path, poll_s: float = POLL_S) -> Iterator[None]:
    """Hold the preparation lock of ``cache_dir`` (an existing, writable folder) for the ``with`` body."""
    fd = open_lock(Path(cache_dir) / LOCK_NAME)
    try:
        holder = take(fd)
        if holder is not None:
            log.warning("waiting for process %s, which is preparing the cache in %s", holder, cache_dir)
            while take(fd) is not None:
                time.sleep(poll_s)
            log.warning("the other preparation of %s ended; checking the cache again", cache_dir)
        yield
    finally:
        os.close(fd)   # closing the descriptor releases the lock
