"""Worker processes that decode images and write them straight into the cache arrays.

Each worker opens the partially written ``.npy`` files as writable memory maps
once, then for each task decodes one image, resizes it to every size and
writes row ``qsl_idx``. Only a short status goes back to the parent, never
pixels, so the parent's memory stays flat and nothing is pickled per image.
Rows of different images never overlap, so workers need no locking.

Failure handling: an image that cannot be decoded, for whatever reason
(corrupt, over PIL's pixel limit, out of memory), is a result with the reason,
never an exception that tears the pool down. A worker that dies (killed, out of
memory) ends the preparation with a :class:`WorkerDied` naming the image it
was on, instead of the pool waiting forever for its answer. Workers exit
with their parent (Linux ``PR_SET_PDEATHSIG``), so a parent killed outright
leaves no orphans writing broken-pipe tracebacks.

Assumptions: Linux ``fork`` start method (the parent has not started CUDA);
each worker runs torch single-threaded so ``workers`` processes use
``workers`` cores.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from qsl.cache.reader import PrepareError
from qsl.cache.jpeg import BadImageError, load_resized

Task = tuple[int, str, int, int]               # qsl_idx, image path, annotated height, annotated width
Result = tuple[int, str | None]                # qsl_idx, reason it is bad (None = written)

_ARRAYS: dict[int, np.memmap] = {}
_DECODER = "torchvision"
_PR_SET_PDEATHSIG = 1
REAP_WAIT_S = 10.0   # longest wait for the workers of a broken pool to be reaped


class WorkerDied(PrepareError):
    """A decoding process died; the message names the image it was preparing."""


def _init(paths: dict[int, str], decoder: str) -> None:
    global _DECODER
    torch.set_num_threads(1)
    _DECODER = decoder
    _ARRAYS.clear()
    for size, path in paths.items():
        _ARRAYS[size] = np.load(path, mmap_mode="r+")


def _init_worker(paths: dict[int, str], decoder: str) -> None:
    """A pool worker's set-up. Only in the forked worker, never in the calling process:

    the pool's workers must end quietly: a parent's SIGTERM handler (run.py turns SIGTERM into an
    interrupt) is not inherited, Ctrl-C is the parent's to handle, and the kernel sends SIGTERM to a
    worker whose parent has died.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):   # not Linux: orphans end at their next write instead
        pass
    _init(paths, decoder)


def _work(task: Task) -> Result:
    idx, path, height, width = task
    try:
        resized, (h, w) = load_resized(path, list(_ARRAYS), _DECODER)
    except FileNotFoundError:
        return idx, "file not found"
    except BadImageError as e:
        return idx, str(e)
    except OSError as e:
        return idx, f"cannot be read ({e.strerror or e})"
    except MemoryError:
        return idx, "cannot be decoded: not enough memory for its pixels"
    except Exception as e:  # noqa: BLE001 - whatever a decoder raises, it is this image's fault: say so
        return idx, f"cannot be decoded ({type(e).__name__}: {e})"
    if (h, w) != (height, width):
        return idx, f"decoded size {w}x{h} differs from the annotation's {width}x{height}"
    for size, arr in _ARRAYS.items():
        arr[idx] = resized[size].numpy()
    return idx, None


def run_tasks(tasks: Sequence[Task], array_paths: dict[int, Path], decoder: str, workers: int
              ) -> Iterator[Result]:
    """Yield one result per task, in task order; ``workers`` > 1 uses a process pool.

    Closing the generator early (an error, Ctrl-C) terminates the workers. Raises WorkerDied when a
    worker dies.
    """
    paths = {s: str(p) for s, p in array_paths.items()}
    if workers <= 1:
        threads = torch.get_num_threads()
        try:
            _init(paths, decoder)
            for task in tasks:
                yield _work(task)
            for arr in _ARRAYS.values():
                arr.flush()
        finally:
            _ARRAYS.clear()
            torch.set_num_threads(threads)
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_init_worker,
                               initargs=(paths, decoder))
    processes: list = []
    received = 0
    try:
        results = pool.map(_work, tasks, chunksize=2)
        # The executor's own process table: before Python 3.14 it has no public way to end its workers.
        processes = list((getattr(pool, "_processes", None) or {}).values())
        for result in results:
            received += 1
            yield result
    except BrokenProcessPool:
        # The pool's own thread ends the other workers and reaps them all. Reading exit codes while it does
        # races it: a process it has just reaped reads as still running here (waitpid fails for the second
        # caller), so the killed worker's signal went missing. Once that thread has ended, every code is final.
        manager = getattr(pool, "_executor_manager_thread", None)
        pool.shutdown(wait=False, cancel_futures=True)
        if manager is not None:
            manager.join(REAP_WAIT_S)
        for p in processes:
            p.join(REAP_WAIT_S)
        codes = sorted({-p.exitcode for p in processes if p.exitcode is not None and p.exitcode < 0})
        codes = [c for c in codes if c != signal.SIGTERM] or codes   # the pool ends the others with SIGTERM
        how = f"killed by signal {', '.join(map(str, codes))}" if codes else "ended abruptly"
        task = tasks[min(received, len(tasks) - 1)]
        raise WorkerDied(f"a decoding process died ({how}; out of memory?) while images from qsl_idx {task[0]} "
                         f"({task[1]}) on were being prepared: check that image, or prepare with --workers 1 to "
                         "see the error; the images done so far are kept and a re-run resumes") from None
    finally:
        processes = processes or list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            if p.is_alive():
                p.terminate()
        for p in processes:   # until each has exited: a worker holds the caller's open files (and locks) while alive
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
