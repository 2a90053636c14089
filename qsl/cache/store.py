"""Keeping a cache folder: what a request lacks, the room it needs, adding arrays, listing and pruning sizes.

The layout is :mod:`qsl.cache.reader`'s. The rules that keep it safe:

- An array is written under a ``.partial`` name and renamed to its final
  name only when complete; ``meta.json`` is then replaced atomically to list
  it, and only after that is an array it supersedes (same size, fewer images
  or another decoder) deleted. A crash at any point leaves a ``meta.json``
  whose arrays are all whole, so a valid cache is never lost to its
  replacement.
- Free space is checked before anything is written or deleted; the message
  says what is needed, what is free and what pruning would give back.
- Files no ``meta.json`` lists (a superseded array whose deletion was
  interrupted, a stale cache's arrays) are removed the next time the folder
  is written.

Every function that writes expects the caller to hold the folder's lock
(:mod:`qsl.cache.lock`).
"""
from __future__ import annotations

import contextlib
import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from ground.files import format_size, format_sizes
from qsl.cache.reader import (
    CACHE_VERSION,
    LAYOUT,
    META_NAME,
    CacheError,
    PrepareError,
    open_array,
    problem_only,
    read_meta,
    same_file_content,
    unusable,
    write_json_atomic,
)

log = logging.getLogger("qsl")
GB = 1e9


def current_meta(cache_dir: Path, annotation_file: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(meta.json, None) when it describes a cache of ``annotation_file``'s content, else (None, why not)."""
    if not (cache_dir / META_NAME).exists():
        return None, None
    try:
        meta = read_meta(cache_dir)
    except CacheError as e:
        return None, problem_only(str(e))
    if not same_file_content(meta["annotation_file"], annotation_file):
        return None, f"it was made from another version of {annotation_file}"
    return meta, None


def missing_sizes(cache_dir: Path, meta: dict[str, Any] | None, sizes: Sequence[int], count: int,
                  decoder: str | None) -> dict[int, tuple[str, bool]]:
    """{size: (why it must be prepared, whether an array that should serve is damaged)} for the sizes
    whose array cannot serve ``count`` images."""
    out = {}
    for s in sizes:
        why = "the cache is empty" if meta is None else unusable(meta, s, count, decoder)
        if why is not None:
            out[s] = (why, False)
            continue
        try:
            open_array(cache_dir, meta["arrays"][str(s)], s)
        except CacheError as e:
            out[s] = (problem_only(str(e)), True)
    return out


def reusable_rows(cache_dir: Path, meta: dict[str, Any] | None, sizes: Sequence[int], decoder: str) -> int:
    """Rows every one of ``sizes`` already holds, whole and made with ``decoder`` (copied, not decoded again)."""
    rows = []
    for s in sizes:
        entry = (meta or {}).get("arrays", {}).get(str(s))
        if entry is None or entry["decoder"] != decoder:
            return 0
        try:
            open_array(cache_dir, entry, s)
        except CacheError:
            return 0
        rows.append(entry["num_images"])
    return min(rows, default=0)


def array_bytes(size: int, count: int) -> int:
    return 3 * size * size * count


def room_problem(cache_dir: Path, meta: dict[str, Any] | None, build: Sequence[int], count: int) -> str | None:
    """None when the disk has room for the new arrays, else what is needed, free, and what could be pruned."""
    need = sum(array_bytes(s, count) for s in build)
    free = shutil.disk_usage(cache_dir).free
    if need <= free:
        return None
    kept = {int(s): e for s, e in (meta or {}).get("arrays", {}).items()}
    replaced = [f"{s} ({kept[s]['num_images']} images)" for s in build if s in kept]
    others = [f"{s} ({format_size(e.get('bytes') or 0)})" for s, e in sorted(kept.items()) if s not in build]
    need_text, free_text = format_sizes(need, free)
    return (f"not enough space in {cache_dir} for the cache: the arrays for size(s) {', '.join(map(str, build))} "
            f"({count} images) need {need_text} and {free_text} is free"
            + (f"; the arrays they replace ({', '.join(replaced)}) are deleted only once the new ones are complete"
               if replaced else "")
            + (f"; sizes you may not need: {', '.join(others)} (python -m qsl.cache.prepare --cache-dir {cache_dir} "
               "--prune SIZE)" if others else "")
            + "; or pass --cache-dir on a larger disk")


def commit(cache_dir: Path, meta: dict[str, Any] | None, annotation: dict[str, Any], images: list[dict],
           image_dir: Path, built: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """List the finished arrays ``built`` ({size: entry}) in meta.json, then delete what they supersede.

    ``images`` is the annotation file's whole image list; meta.json keeps those the longest array holds.
    """
    arrays = dict((meta or {}).get("arrays", {}))
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for s, entry in built.items():
        arrays[str(s)] = {**entry, "created": now}
    new = {"version": CACHE_VERSION, "layout": LAYOUT, "annotation_file": annotation, "total_images": len(images),
           "image_dir": str(image_dir), "images": images, "arrays": arrays}
    _rewrite(cache_dir, new)
    return new


def _rewrite(cache_dir: Path, meta: dict[str, Any]) -> int:
    """Cut ``meta``'s image list to the images its longest array holds, write it as meta.json, then delete
    the array files it no longer lists; return the bytes freed."""
    longest = max(e["num_images"] for e in meta["arrays"].values())
    meta["images"] = meta["images"][:longest]
    write_json_atomic(cache_dir / META_NAME, meta)
    return remove_unlisted(cache_dir, meta)


def remove_unlisted(cache_dir: Path, meta: dict[str, Any] | None) -> int:
    """Delete the array files ``meta`` does not list (partial ones too); return the bytes freed."""
    listed = {e["file"] for e in (meta or {}).get("arrays", {}).values()}
    freed = 0
    for path in cache_dir.glob("images_*.npy*"):
        if path.name not in listed:
            with contextlib.suppress(OSError):
                size = path.stat().st_size
                path.unlink()
                freed += size
    return freed


def prune(cache_dir: Path, sizes: Sequence[int]) -> int:
    """Remove the arrays of ``sizes`` (meta.json first, then the files); return the bytes freed."""
    meta = read_meta(cache_dir)
    absent = [s for s in sizes if str(s) not in meta["arrays"]]
    if absent:
        raise PrepareError(f"the cache in {cache_dir} has no size {', '.join(map(str, absent))}; it has "
                           f"{', '.join(sorted(meta['arrays'], key=int)) or 'none'}")
    arrays = {s: e for s, e in meta["arrays"].items() if int(s) not in sizes}
    if not arrays:
        (cache_dir / META_NAME).unlink()
        return remove_unlisted(cache_dir, None)
    return _rewrite(cache_dir, {**meta, "arrays": arrays})


def listing(cache_dir: Path) -> str:
    """What the cache holds, one line per size, for ``python -m qsl.cache.prepare --list``."""
    meta = read_meta(cache_dir)
    lines = [f"cache {cache_dir}: from {meta['annotation_file']['path']} "
             f"({meta.get('total_images') or '?'} images listed there)",
             f"  {'size':>5} {'images':>7} {'skipped':>7} {'GB':>7}  {'decoder':<12} created"]
    for s, e in sorted(meta["arrays"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"  {s:>5} {e['num_images']:>7} {len(e.get('skipped', [])):>7} "
                     f"{(e.get('bytes') or 0) / GB:>7.2f}  {e['decoder']:<12} {e.get('created') or '?'}")
    return "\n".join(lines)
