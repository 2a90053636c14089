"""Writing new arrays into a cache folder: decode, resize, stream to disk, resume, list them when complete.

:func:`build` is the work behind :mod:`qsl.cache.prepare`: for the sizes that cannot
serve a request it writes ``*.partial`` arrays (rows it can copy from an array
it extends are copied, the rest decoded by :mod:`qsl.cache.decode_pool`), saves a
small progress file every second, renames the arrays to their final names
when complete and lists them in ``meta.json`` (:func:`qsl.cache.store.commit`).
Re-running with the same inputs resumes from the progress file. Free space is
checked before anything is written or deleted, and disk blocks are reserved up
front (``posix_fallocate``); when the disk fills anyway, the partial arrays are
removed and the error says what was needed and what is free. The caller holds
the folder's lock.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ground.files import format_sizes
from ground.progress import Progress

from qsl.cache.reader import (
    CACHE_VERSION,
    MAX_IMAGE_SIZE,
    PrepareError,
    array_file,
    file_fingerprint,
    write_json_atomic,
)
from qsl.cache.store import (
    array_bytes,
    commit,
    current_meta,
    missing_sizes,
    remove_unlisted,
    reusable_rows,
    room_problem,
)
from qsl.coco_layout import find_image_dir, first_images, read_image_list
from qsl.cache.jpeg import RESIZE_METHOD
from qsl.cache.decode_pool import run_tasks

log = logging.getLogger("qsl")

STATE_NAME = "prepare_state.json"
STATE_SAVE_S = 1.0  # seconds between progress-file saves (resume granularity)
DEFAULT_DECODER = "torchvision"


def check_sizes(sizes: Sequence[int]) -> list[int]:
    out = list(dict.fromkeys(int(s) for s in sizes))
    if not out or any(s < 1 or s > MAX_IMAGE_SIZE for s in out):
        raise PrepareError(f"image sizes must be 1..{MAX_IMAGE_SIZE} pixels, got {list(sizes)}")
    return out


def _reserve(path: Path, shape: tuple[int, ...]) -> None:
    """Create a zero-filled uint8 ``.npy`` of ``shape`` and reserve its disk blocks."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    del arr
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


def _resume_point(cache_dir: Path, fingerprint: dict, partials: dict[int, Path]) -> tuple[int, list]:
    """(images already done, skipped so far) from a matching progress file, else (0, [])."""
    try:
        state = json.loads((cache_dir / STATE_NAME).read_text())
    except (OSError, ValueError):
        return 0, []
    if state.get("fingerprint") != fingerprint:
        return 0, []
    for size, path in partials.items():
        try:
            shape = np.load(path, mmap_mode="r").shape
        except (OSError, ValueError):
            return 0, []
        if shape != (fingerprint["num_images"], 3, size, size):
            return 0, []
    return int(state["done"]), list(state["skipped"])


def _failed(cache_dir: Path, meta: dict | None, e: OSError, need: int) -> PrepareError:
    """Remove this preparation's partial arrays and say why it stopped (with the space figures on a full disk)."""
    remove_unlisted(cache_dir, meta)
    (cache_dir / STATE_NAME).unlink(missing_ok=True)
    if e.errno == errno.ENOSPC:
        free = shutil.disk_usage(cache_dir).free
        need_text, free_text = format_sizes(need, free)
        return PrepareError(f"the disk holding {cache_dir} is full: the new arrays need {need_text}, "
                            f"{free_text} is free now that their partial files are removed; free some space "
                            f"or pass --cache-dir on a larger disk (the cache's other arrays are intact)")
    return PrepareError(f"cannot write the cache in {cache_dir} ({e.strerror or e}): pass a writable --cache-dir")


def build(cache_dir: Path, ann: Path, data_dir: str | Path | None, sizes: list[int], max_images: int | None,
           accept: str | None, decoder: str, workers: int, skip_bad: bool, progress: bool) -> list[int]:
    """Prepare the sizes that cannot serve the request (``accept``: decoder they must have, None = any);
    the caller holds the folder's lock. Returns the sizes prepared."""
    images = read_image_list(ann)
    count = len(first_images(images, max_images, ann))
    meta, stale = current_meta(cache_dir, ann)
    if stale:
        log.warning("replacing the cache in %s: %s", cache_dir, stale)
    todo = missing_sizes(cache_dir, meta, sizes, count, accept)
    if not todo:
        return []
    for s, (why, damaged) in todo.items():
        log.log(logging.WARNING if damaged else logging.INFO, "preparing size %d in %s (%d images): %s", s,
                cache_dir, count, why)
    image_dir = find_image_dir(data_dir, ann)
    start = min(count, reusable_rows(cache_dir, meta, list(todo), decoder))
    ann_fp = file_fingerprint(ann)
    fingerprint = {"version": CACHE_VERSION, "sizes": sorted(todo), "decoder": decoder, "num_images": count,
                   "start": start, "annotation_sha256": ann_fp["sha256"], "image_dir": str(image_dir.resolve())}
    partials = {s: cache_dir / (array_file(s, count, decoder) + ".partial") for s in sorted(todo)}
    need = sum(array_bytes(s, count) for s in partials)
    done, skipped = _resume_point(cache_dir, fingerprint, partials)
    if done == 0:
        remove_unlisted(cache_dir, meta)   # stale partial arrays and superseded files
        problem = room_problem(cache_dir, meta, list(partials), count)
        if problem:
            raise PrepareError(problem)
        try:
            for s, path in partials.items():
                _reserve(path, (count, 3, s, s))
            done, skipped = _copy_rows(cache_dir, meta, partials, start)
        except OSError as e:
            raise _failed(cache_dir, meta, e, need) from None
    try:
        skipped = _decode(images, image_dir, ann, partials, done, count, decoder, workers, skip_bad, progress,
                          cache_dir / STATE_NAME, fingerprint, skipped)
        built = _finish(cache_dir, partials, skipped, count, decoder)
        commit(cache_dir, meta, ann_fp, images, image_dir.resolve(), built)
        (cache_dir / STATE_NAME).unlink(missing_ok=True)
    except OSError as e:
        raise _failed(cache_dir, meta, e, need) from None
    return sorted(built)


def _copy_rows(cache_dir: Path, meta: dict | None, partials: dict[int, Path], rows: int) -> tuple[int, list]:
    """Copy the first ``rows`` rows of each size's current array into its new one; (rows, their skipped list)."""
    if rows == 0:
        return 0, []
    skipped: dict[int, dict] = {}
    for s, path in partials.items():
        entry = meta["arrays"][str(s)]
        old, new = np.load(cache_dir / entry["file"], mmap_mode="r"), np.load(path, mmap_mode="r+")
        for i in range(0, rows, 64):
            new[i:min(rows, i + 64)] = old[i:min(rows, i + 64)]
        new.flush()
        del old, new
        skipped.update({item["qsl_idx"]: item for item in entry.get("skipped", []) if item["qsl_idx"] < rows})
    return rows, [skipped[i] for i in sorted(skipped)]


def _decode(images: list[dict], image_dir: Path, ann: Path, partials: dict[int, Path], done: int, count: int,
            decoder: str, workers: int, skip_bad: bool, progress: bool, state_path: Path, fingerprint: dict,
            skipped: list) -> list:
    """Decode images ``done``..``count - 1`` into the partial arrays, saving the progress file as it goes."""
    tasks = [(im["qsl_idx"], str(image_dir / im["file_name"]), im["height"], im["width"])
             for im in images[done:count]]
    last_save = time.monotonic()
    results = run_tasks(tasks, partials, decoder, max(1, workers))
    desc = f"prepare {'/'.join(map(str, partials))}"
    try:
        with Progress(desc, total=count, initial=done, enabled=progress, logger=log) as bar:
            for idx, reason in results:
                if reason is not None:
                    im = images[idx]
                    if not skip_bad:
                        raise PrepareError(f"image {image_dir / im['file_name']} (qsl_idx {idx}, id {im['id']}) "
                                           f"{reason}: fix or remove it from {ann}, or pass --skip-bad-images to "
                                           f"skip it (its pixels are left zero and it is recorded as skipped)")
                    skipped.append({"qsl_idx": idx, "id": im["id"], "file_name": im["file_name"], "reason": reason})
                done = idx + 1
                bar.update(1)
                if time.monotonic() - last_save > STATE_SAVE_S:
                    write_json_atomic(state_path, {"fingerprint": fingerprint, "done": done, "skipped": skipped})
                    last_save = time.monotonic()
    finally:
        results.close()
    return skipped


def _finish(cache_dir: Path, partials: dict[int, Path], skipped: list, count: int, decoder: str
            ) -> dict[int, dict[str, Any]]:
    """Zero the skipped rows, flush, and rename each partial array to its final name; their meta.json entries."""
    built = {}
    for s, path in partials.items():
        arr = np.load(path, mmap_mode="r+")
        for item in skipped:  # a bad image may have been half written before a resume: zero it
            arr[item["qsl_idx"]] = 0
        arr.flush()
        del arr
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        final = cache_dir / array_file(s, count, decoder)
        os.replace(path, final)
        built[s] = {"file": final.name, "num_images": count, "decoder": decoder, "resize": RESIZE_METHOD[decoder],
                    "bytes": final.stat().st_size, "skipped": list(skipped)}
    return built


