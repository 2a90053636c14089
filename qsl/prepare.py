"""Build the preprocessed image cache from a COCO-layout data set.

``prepare_cache(data_dir, sizes)`` decodes every image listed in the
annotation file once, resizes it to each square size (see :mod:`qsl.decode`)
and streams the rows into one ``.npy`` array per size (layout in
:mod:`qsl.cache`); the whole set is never held in RAM.

Inputs: ``<data>/annotations/instances_val2017.json`` with images in
``<data>/val2017/`` or ``<data>/images/val2017/``, or any annotation file
``instances_<split>.json`` given by path (images then in ``<split>/`` beside
or under ``images/`` of its parent's parent, or of ``data_dir``).

Crash safety: arrays are written under ``*.partial`` names, with a small
progress file saved every second; ``meta.json`` is written last, by rename,
and removed before any rebuild starts, so an interrupted preparation never
looks like a valid cache. Re-running with the same inputs resumes from the
progress file; anything else rebuilds from scratch. Disk space is reserved
up front (``posix_fallocate``), so a full disk is an error before decoding,
not a crash while writing a memory map.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import re
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from harness.shared.files import prove_writable

from .cache import (
    CACHE_VERSION,
    META_NAME,
    CacheError,
    PrepareError,
    array_name,
    file_fingerprint,
    open_cache,
    write_json_atomic,
)
from .cache_lock import cache_lock
from .coco_layout import default_cache_dir, find_inputs, read_image_list
from .decode import DECODERS, RESIZE_METHOD
from .prepare_pool import run_tasks

log = logging.getLogger("qsl")

STATE_NAME = "prepare_state.json"
STATE_SAVE_S = 1.0  # seconds between progress-file saves (resume granularity)


def _check_sizes(sizes: Sequence[int]) -> list[int]:
    out = list(dict.fromkeys(int(s) for s in sizes))
    if not out or any(s < 1 or s > 4096 for s in out):
        raise PrepareError(f"image sizes must be 1..4096 pixels, got {list(sizes)}")
    return out


def _write_error(path: Path, e: OSError) -> PrepareError:
    if e.errno == errno.ENOSPC:
        return PrepareError(f"no space left on the device writing {path}: free some space or pass --cache-dir "
                            f"on a larger disk")
    return PrepareError(f"cannot write {path} ({e.strerror or e}): pass a writable --cache-dir")


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
    n = fingerprint["num_images"]
    for size, path in partials.items():
        try:
            shape = np.load(path, mmap_mode="r").shape
        except (OSError, ValueError):
            return 0, []
        if shape != (n, 3, size, size):
            return 0, []
    return int(state["done"]), list(state["skipped"])


def prepare_cache(data_dir: str | Path | None, sizes: Sequence[int], cache_dir: str | Path | None = None,
                  annotation_file: str | Path | None = None, max_images: int | None = None, workers: int = 2,
                  skip_bad: bool = False, progress: bool = True, decoder: str = "torchvision",
                  keep_if: Callable[[Path], bool] | None = None) -> Path:
    """Decode, resize and store every listed image at every size; return the cache folder.

    The writing holds the folder's lock (:mod:`qsl.cache_lock`), so processes
    preparing the same folder take turns. ``keep_if(cache_dir)``, when given,
    runs once the lock is held; if it returns True the folder is left as it is
    (another process has just made the cache this caller wants).

    Raises:
        PrepareError: missing annotation file or image folder, a missing,
            empty or corrupt image (unless ``skip_bad``), an unwritable or
            full output folder. Messages name the file and what to do.
    """
    if decoder not in DECODERS:
        raise PrepareError(f"unknown decoder {decoder!r}; use one of {', '.join(DECODERS)}")
    sizes = _check_sizes(sizes)
    ann, image_dir = find_inputs(data_dir, annotation_file)
    images = read_image_list(ann, max_images)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(data_dir, ann)
    try:
        prove_writable(cache_dir)
    except OSError as e:
        raise PrepareError(f"cannot write the cache to {cache_dir} ({e.strerror or e}): pass --cache-dir with a "
                           f"writable folder") from None
    with cache_lock(cache_dir):
        if keep_if is not None and keep_if(cache_dir):
            log.info("the cache in %s was finished by another process; using it", cache_dir)
        else:
            _build(ann, image_dir, images, cache_dir, sizes, max_images, workers, skip_bad, progress, decoder)
    return cache_dir


def _build(ann: Path, image_dir: Path, images: list[dict], cache_dir: Path, sizes: list[int],
           max_images: int | None, workers: int, skip_bad: bool, progress: bool, decoder: str) -> None:
    """Write (or resume writing) the arrays, then ``meta.json``; the caller holds the folder's lock."""
    n = len(images)
    ann_fp = file_fingerprint(ann)
    fingerprint = {"version": CACHE_VERSION, "sizes": sizes, "decoder": decoder, "num_images": n,
                   "annotation_sha256": ann_fp["sha256"], "image_dir": str(image_dir.resolve())}
    partials = {s: cache_dir / (array_name(s) + ".partial") for s in sizes}
    meta_path, state_path = cache_dir / META_NAME, cache_dir / STATE_NAME
    try:
        meta_path.unlink(missing_ok=True)  # from here on the folder is not a valid cache until we finish
        for old in cache_dir.glob("images_*.npy"):
            old.unlink()
        done, skipped = _resume_point(cache_dir, fingerprint, partials)
        if done == 0:
            state_path.unlink(missing_ok=True)
            for stale in cache_dir.glob("images_*.npy.partial"):
                stale.unlink()
            need = sum(n * 3 * s * s for s in sizes)
            free = shutil.disk_usage(cache_dir).free
            if need > free:
                raise OSError(errno.ENOSPC, f"need {need / 2**30:.2f} GiB, {free / 2**30:.2f} GiB free")
            for s, path in partials.items():
                _reserve(path, (n, 3, s, s))
    except OSError as e:
        raise _write_error(cache_dir, e) from None

    tasks = [(im["qsl_idx"], str(image_dir / im["file_name"]), im["height"], im["width"]) for im in images[done:]]
    bar = tqdm(total=n, initial=done, unit="img", desc=f"prepare {'/'.join(map(str, sizes))}",
               disable=None if progress else True, smoothing=0.1)
    last_save = time.monotonic()
    results = run_tasks(tasks, partials, decoder, max(1, workers))
    try:
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
    except OSError as e:
        raise _write_error(state_path, e) from None
    finally:
        results.close()
        bar.close()

    try:
        for s, path in partials.items():
            arr = np.load(path, mmap_mode="r+")
            for item in skipped:  # a bad image may have been half written before a resume: zero it
                arr[item["qsl_idx"]] = 0
            arr.flush()
            del arr
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        byte_sizes = {}
        for s, path in partials.items():
            final = cache_dir / array_name(s)
            os.replace(path, final)
            byte_sizes[str(s)] = final.stat().st_size
        meta = {"version": CACHE_VERSION, "sizes": sizes, "decoder": decoder, "resize": RESIZE_METHOD[decoder],
                "layout": "uint8 [N, 3, S, S] RGB per size, row = qsl_idx = position in the annotation file",
                "annotation_file": ann_fp, "image_dir": str(image_dir.resolve()), "max_images": max_images,
                "num_images": n, "array_bytes": byte_sizes,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "images": images, "skipped": skipped}
        write_json_atomic(meta_path, meta)
        state_path.unlink(missing_ok=True)
    except OSError as e:
        raise _write_error(cache_dir, e) from None


def problem_only(message: str) -> str:
    """A CacheError's message without its advice to run the preparation (for when it is running already)."""
    return re.sub(r"[:;] (?:delete it and )?(?:re-)?run python -m qsl\.prepare.*$", "", message, flags=re.S)


def ensure_cache(data_dir: str | Path | None, sizes: Sequence[int], cache_dir: str | Path | None = None,
                 annotation_file: str | Path | None = None, **prepare_kwargs: Any):
    """Open the cache if it is valid for ``sizes``, else prepare it first; returns a :class:`qsl.cache.Cache`.

    A cache is reused only when made with the same ``max_images`` (in
    ``prepare_kwargs``).
    """
    ann, _ = find_inputs(data_dir, annotation_file)
    where = Path(cache_dir) if cache_dir is not None else default_cache_dir(data_dir, ann)
    wanted = prepare_kwargs.get("max_images")

    def usable(folder: Path, say_why: bool = False) -> bool:
        try:
            cache = open_cache(folder, sizes, ann)
        except CacheError as e:
            if say_why and (folder / META_NAME).exists():  # a cache was there but cannot be used: say why
                log.warning("rebuilding the cache in %s: %s", folder, problem_only(str(e)))
            return False
        if cache.meta.get("max_images") == wanted:
            return True
        if say_why:
            log.warning("rebuilding the cache in %s: it was made for max_images=%s, this run asks for %s",
                        folder, cache.meta.get("max_images"), wanted)
        return False

    if not usable(where):   # checked again under the lock: another process may be making it right now
        prepare_cache(data_dir, sizes, where, annotation_file=ann, keep_if=lambda d: usable(d, say_why=True),
                      **prepare_kwargs)
    return open_cache(where, sizes, ann)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Preprocess COCO images into the SSD input cache.")
    parser.add_argument("--data", help="COCO folder with annotations/ and val2017/ (or images/val2017/)")
    parser.add_argument("--image-size", type=int, nargs="+", required=True, help="square input sizes, e.g. 300 600")
    parser.add_argument("--cache-dir", help="where to write the cache (default <data>/ssd_cache)")
    parser.add_argument("--annotation-file", help="annotation JSON (default <data>/annotations/instances_val2017.json)")
    parser.add_argument("--max-images", type=int, help="use only the first N images of the annotation file")
    parser.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images instead of failing")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes (default 2)")
    parser.add_argument("--decoder", choices=DECODERS, default="torchvision", help="image decode/resize path")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        out = prepare_cache(args.data, args.image_size, args.cache_dir, args.annotation_file, args.max_images,
                            args.workers, args.skip_bad_images, not args.quiet, args.decoder)
        cache = open_cache(out, args.image_size)
    except CacheError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"cache ready: {out} ({cache.num_images} images, sizes {list(cache.sizes)}, "
          f"{len(cache.skipped)} skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
