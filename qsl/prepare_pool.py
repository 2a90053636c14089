"""Worker processes that decode images and write them straight into the cache arrays.

Each worker opens the partially written ``.npy`` files as writable memory maps
once, then for each task decodes one image, resizes it to every size and
writes row ``qsl_idx``. Only a short status goes back to the parent, never
pixels, so the parent's memory stays flat and nothing is pickled per image.
Rows of different images never overlap, so workers need no locking.

Assumptions: Linux ``fork`` start method (the parent has not started CUDA);
each worker runs torch single-threaded so ``workers`` processes use
``workers`` cores.
"""
from __future__ import annotations

import multiprocessing
import signal
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .decode import BadImageError, load_resized

Task = tuple[int, str, int, int]               # qsl_idx, image path, annotated height, annotated width
Result = tuple[int, str | None]                # qsl_idx, reason it is bad (None = written)

_ARRAYS: dict[int, np.memmap] = {}
_DECODER = "torchvision"


def _init(paths: dict[int, str], decoder: str) -> None:
    global _DECODER
    torch.set_num_threads(1)
    _DECODER = decoder
    _ARRAYS.clear()
    for size, path in paths.items():
        _ARRAYS[size] = np.load(path, mmap_mode="r+")


def _init_worker(paths: dict[int, str], decoder: str) -> None:
    """A pool worker's set-up. Only in the forked worker, never in the calling process:

    the pool ends its workers with SIGTERM, so a parent's SIGTERM handler (run.py turns SIGTERM into an
    interrupt) must not be inherited, or every worker would print a traceback on its way out; Ctrl-C is
    the parent's to handle.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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
    if (h, w) != (height, width):
        return idx, f"decoded size {w}x{h} differs from the annotation's {width}x{height}"
    for size, arr in _ARRAYS.items():
        arr[idx] = resized[size].numpy()
    return idx, None


def run_tasks(tasks: Sequence[Task], array_paths: dict[int, Path], decoder: str, workers: int
              ) -> Iterator[Result]:
    """Yield one result per task, in task order; ``workers`` > 1 uses a process pool.

    Closing the generator early (an error, Ctrl-C) terminates the pool.
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
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(paths, decoder)) as pool:  # exit = terminate
        yield from pool.imap(_work, tasks, chunksize=2)
