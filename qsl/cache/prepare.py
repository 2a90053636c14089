"""Prepare the image cache a run needs, adding only what it lacks; ``python -m qsl.cache.prepare`` to do it by hand.

``ensure_cache(data_dir, sizes, max_images=N)`` opens the cache when it holds
the first N images (None = all) at every size, and otherwise prepares only the
missing sizes (:mod:`qsl.cache.build`): each image is decoded once, resized to each
of them (see :mod:`qsl.cache.jpeg`) and streamed into one ``.npy`` array per size
(layout in :mod:`qsl.cache.reader`, bookkeeping in :mod:`qsl.cache.store`); the
whole set is never held in RAM. Arrays of other sizes are kept, and a larger
array serves a smaller request, so a 16-image smoke test runs from the
5000-image cache and never replaces it. An array extended to more images
copies the rows it already has instead of decoding them again.

Inputs: ``<data>/annotations/instances_val2017.json`` with images in
``<data>/val2017/`` or ``<data>/images/val2017/``, or any annotation file
``instances_<split>.json`` given by path (images then in ``<split>/`` beside
or under ``images/`` of its parent's parent, or of ``data_dir``). Images are
read only when something must be prepared.

Command line::

    python -m qsl.cache.prepare --data DIR --image-size 300 600 [--max-images N] [--cache-dir DIR] [--decoder pil]
    python -m qsl.cache.prepare --data DIR --list                 what the cache holds, per size
    python -m qsl.cache.prepare --data DIR --prune 600 [700 ...]  remove sizes no longer needed

Exit status: 0 done, 2 bad input (one line naming the file and what to do).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from ground.files import format_size, prove_writable

from qsl.cache.build import DEFAULT_DECODER, build, check_sizes
from qsl.cache.reader import CacheError, PrepareError, check_max_images, open_cache, read_meta
from qsl.cache.lock import cache_lock
from qsl.cache.store import current_meta, listing, missing_sizes, prune, room_problem
from qsl.coco_layout import (
    default_cache_dir,
    find_annotation_file,
    find_image_dir,
    image_list,
    read_image_list,
)
from qsl.cache.jpeg import DECODERS

log = logging.getLogger("qsl")


def check_can_prepare(data_dir: str | Path | None, sizes: Sequence[int], cache_dir: str | Path | None = None,
                      annotation_file: str | Path | None = None, max_images: int | None = None,
                      decoder: str | None = None, annotations: Any = None) -> list[int]:
    """The sizes a run would have to prepare, after checking it can: images found, folder writable, room on disk.

    Cheap (reads meta.json and the annotation file's image list); the preparation checks again under its lock.
    ``annotations``: the annotation file already parsed, when the caller has it (it is not read again).
    """
    ann = find_annotation_file(data_dir, annotation_file)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(data_dir, ann)
    images = read_image_list(ann, max_images) if annotations is None else image_list(annotations, ann, max_images)
    count = len(images)
    meta, _ = current_meta(cache_dir, ann)
    build = sorted(missing_sizes(cache_dir, meta, check_sizes(sizes), count, decoder))
    if build:
        find_image_dir(data_dir, ann)
        _writable(cache_dir)
        problem = room_problem(cache_dir, meta, build, count)
        if problem:
            raise PrepareError(problem)
    return build


def _writable(cache_dir: Path) -> None:
    try:
        prove_writable(cache_dir)
    except OSError as e:
        raise PrepareError(f"cannot write the cache to {cache_dir} ({e.strerror or e}): pass --cache-dir with a "
                           f"writable folder") from None


def prepare_cache(data_dir: str | Path | None, sizes: Sequence[int], cache_dir: str | Path | None = None,
                  annotation_file: str | Path | None = None, max_images: int | None = None, workers: int = 2,
                  skip_bad: bool = False, progress: bool = True, decoder: str = DEFAULT_DECODER) -> Path:
    """Make the cache hold the first ``max_images`` images (None = all) at every size; return its folder.

    Sizes that already hold enough images made with ``decoder`` are kept as they are. The writing holds
    the folder's lock (:mod:`qsl.cache.lock`), so processes preparing the same folder take turns.

    Raises:
        PrepareError: missing annotation file or image folder, a missing,
            empty or corrupt image (unless ``skip_bad``), an unwritable or
            full output folder. Messages name the file and what to do.
    """
    if decoder not in DECODERS:
        raise PrepareError(f"unknown decoder {decoder!r}; use one of {', '.join(DECODERS)}")
    ann = find_annotation_file(data_dir, annotation_file)
    check_max_images(max_images)   # before the folder is made
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(data_dir, ann)
    _writable(cache_dir)
    with cache_lock(cache_dir):
        build(cache_dir, ann, data_dir, check_sizes(sizes), max_images, decoder, decoder, workers, skip_bad,
               progress)
    return cache_dir


def ensure_cache(data_dir: str | Path | None, sizes: Sequence[int], cache_dir: str | Path | None = None,
                 annotation_file: str | Path | None = None, max_images: int | None = None, workers: int = 2,
                 skip_bad: bool = False, progress: bool = True, decoder: str | None = None):
    """Open the cache for the first ``max_images`` images at ``sizes``, preparing what it lacks first.

    Returns a :class:`qsl.cache.reader.Cache`. ``decoder`` None accepts arrays made with any decoder (new ones
    use the default). A complete cache opens without the image folder and without taking the lock.
    """
    ann = find_annotation_file(data_dir, annotation_file)
    check_max_images(max_images)   # before the folder is made
    where = Path(cache_dir) if cache_dir is not None else default_cache_dir(data_dir, ann)
    try:
        return open_cache(where, sizes, ann, max_images, decoder)
    except (CacheError, OSError, ValueError):   # it cannot serve this run: prepare what it lacks, then open again
        pass
    _writable(where)
    with cache_lock(where):
        built = build(where, ann, data_dir, check_sizes(sizes), max_images, decoder, decoder or DEFAULT_DECODER,
                       workers, skip_bad, progress)
    if not built:
        log.info("the cache in %s was finished by another process; using it", where)
    return open_cache(where, sizes, ann, max_images, decoder)



def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m qsl.cache.prepare",
                                description="Preprocess COCO images into the SSD input cache, or list/prune it.")
    p.add_argument("--data", help="COCO folder with annotations/ and val2017/ (or images/val2017/)")
    p.add_argument("--image-size", type=int, nargs="+", help="square input sizes to prepare, e.g. 300 600")
    p.add_argument("--cache-dir", help="the cache folder (default <data>/ssd_cache)")
    p.add_argument("--annotation-file", help="annotation JSON (default <data>/annotations/instances_val2017.json)")
    p.add_argument("--max-images", type=int, help="prepare only the first N images of the annotation file")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images instead of failing")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (default 2)")
    p.add_argument("--decoder", choices=DECODERS, default=DEFAULT_DECODER, help="image decode/resize path")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--list", action="store_true", help="list the sizes the cache holds, with image counts and bytes")
    p.add_argument("--prune", type=int, nargs="+", metavar="SIZE", help="remove these sizes from the cache")
    return p


def _cache_dir(args: argparse.Namespace) -> Path:
    if args.cache_dir:
        return Path(args.cache_dir)
    return default_cache_dir(args.data, find_annotation_file(args.data, args.annotation_file))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.list or args.prune:
            where = _cache_dir(args)
            read_meta(where)   # a cache is there (else: say so, without creating a lock file)
            if args.prune:
                with cache_lock(where):
                    freed = prune(where, args.prune)
                print(f"pruned size(s) {', '.join(map(str, args.prune))} from {where}: {format_size(freed)} freed")
            if args.list or (where / "meta.json").exists():
                print(listing(where))
            return 0
        if not args.image_size:
            print("error: give --image-size S [S ...] to prepare, or --list / --prune SIZE", file=sys.stderr)
            return 2
        out = prepare_cache(args.data, args.image_size, args.cache_dir, args.annotation_file, args.max_images,
                            args.workers, args.skip_bad_images, not args.quiet, args.decoder)
        cache = open_cache(out, args.image_size, max_images=args.max_images)
    except CacheError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"cache ready: {out} ({cache.num_images} images, sizes {list(cache.sizes)}, "
          f"{len(cache.skipped)} skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
