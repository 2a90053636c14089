"""The preprocessed image cache on disk, and opening it for reading.

Layout of a cache folder (written by :mod:`qsl.cache.prepare`, kept by :mod:`qsl.cache.store`):

- ``images_<S>_<N>_<decoder>.npy``: one uint8 array ``[N, 3, S, S]`` (RGB,
  resized to S x S, not normalized) per input size S, in ``.npy`` format so
  it can be memory-mapped. Row ``i`` is ``qsl_idx`` ``i``: the position of the
  image in the annotation file's ``images`` list. The N rows are the first N
  images of that list, so an array of N rows serves any request for N or
  fewer images. Images skipped as bad keep their row, filled with zeros.
  Sizes are independent: each has its own array, image count and decoder.
- ``meta.json``: replaced atomically whenever an array is added, replaced or
  pruned, and only once the array it names is complete, so every array it
  lists is whole. It records the format version, the annotation file (path,
  size, mtime, sha256) and its number of images, per image ``qsl_idx, id,
  file_name, width, height`` (for the longest array), and per size the
  array's file, image count, decoder, resize method, byte size, creation time
  and the images skipped as unreadable.

Version 1 caches (one ``images_<S>.npy`` per size, all for the same images)
are read as they are: their arrays are listed under their old names.

Assumptions: the image files themselves are not re-checked when a cache is
opened (that would cost a full decode), so a cache whose image folder has
moved still serves; the annotation file is, by size and mtime, falling back
to its sha256 when those differ.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ground.errors import InputError
from ground.files import replace_atomically

CACHE_VERSION = 2
META_NAME = "meta.json"
# Largest square input prepared: a 4096 image is 50 MB per cached copy, and an SSD's first convolution
# writes 64 x 2048 x 2048 values (1 GB in fp32) for it; anything larger is a mistake, not a setting.
MAX_IMAGE_SIZE = 4096
PREPARE_HINT = "python -m qsl.cache.prepare --data DIR --image-size A B"
LAYOUT = "uint8 [N, 3, S, S] RGB per size, row = qsl_idx = position in the annotation file, first N images"


class CacheError(InputError, RuntimeError):
    """The cache is missing, stale, incomplete or made for other sizes; the message says what to do."""


class PrepareError(CacheError):
    """Preparation cannot proceed; the message names the file and what to do."""


def problem_only(message: str) -> str:
    """A CacheError's message without its advice to run the preparation (for when it is running already)."""
    return re.sub(r"[:;] (?:delete it and )?(?:re-)?run python -m qsl\.cache\.prepare.*$", "", message, flags=re.S)


def array_file(size: int, num_images: int, decoder: str) -> str:
    """The file name of the array of ``num_images`` images at ``size`` made with ``decoder``."""
    return f"images_{size}_{num_images}_{decoder}.npy"


def file_fingerprint(path: str | Path, with_hash: bool = True) -> dict[str, Any]:
    """Path, byte size, mtime (ns) and optionally sha256 of a file."""
    path = Path(path).resolve()
    st = path.stat()
    fp: dict[str, Any] = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if with_hash:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        fp["sha256"] = h.hexdigest()
    return fp


def same_file_content(recorded: dict[str, Any], path: str | Path) -> bool:
    """True when ``path`` holds the file ``recorded`` describes (size+mtime, else sha256)."""
    now = file_fingerprint(path, with_hash=False)
    if now["size"] != recorded["size"]:
        return False
    if now["mtime_ns"] == recorded["mtime_ns"]:
        return True
    return file_fingerprint(path)["sha256"] == recorded["sha256"]


def npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length in bytes) read from a ``.npy`` file's header."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran:
            raise CacheError(f"{path} is stored in Fortran order; the cache expects C order: re-run {PREPARE_HINT}")
        return tuple(shape), dtype, f.tell()


@dataclass
class Cache:
    """An opened, validated view of the first ``num_images`` images of a cache. Arrays are read-only memory maps."""

    cache_dir: Path
    meta: dict[str, Any]
    arrays: dict[int, np.memmap]                 # {S: uint8 memmap [N, 3, S, S]}
    images: list[dict[str, Any]]                 # [{qsl_idx, id, file_name, width, height}] of the N images
    skipped: list[dict[str, Any]]                # images skipped as bad: [{qsl_idx, id, file_name, reason}]

    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(self.arrays)

    @property
    def image_hw(self) -> np.ndarray:
        """int64 [N, 2]: original (height, width) in pixels."""
        return np.array([[im["height"], im["width"]] for im in self.images], dtype=np.int64).reshape(-1, 2)

    @property
    def image_ids(self) -> np.ndarray:
        """int64 [N]: COCO image id per qsl_idx."""
        return np.array([im["id"] for im in self.images], dtype=np.int64)


def _from_version_1(meta: dict[str, Any]) -> dict[str, Any]:
    """A version 1 meta.json (every size for the same images, ``images_<S>.npy``) as version 2."""
    arrays = {str(s): {"file": f"images_{s}.npy", "num_images": meta["num_images"], "decoder": meta["decoder"],
                       "resize": meta.get("resize"), "bytes": meta.get("array_bytes", {}).get(str(s)),
                       "created": meta.get("created"), "skipped": meta.get("skipped", [])} for s in meta["sizes"]}
    total = meta["num_images"] if meta.get("max_images") is None else None
    return {"version": CACHE_VERSION, "layout": LAYOUT, "annotation_file": meta["annotation_file"],
            "total_images": total, "image_dir": meta.get("image_dir"), "images": meta["images"], "arrays": arrays}


def read_meta(cache_dir: Path) -> dict[str, Any]:
    meta_path = Path(cache_dir) / META_NAME
    if not meta_path.is_file():
        raise CacheError(f"no preprocessed cache in {cache_dir} ({META_NAME} missing, or preparation did not "
                         f"finish): run {PREPARE_HINT} --cache-dir {cache_dir}")
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("version") == 1:
            meta = _from_version_1(meta)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CacheError(f"{meta_path} is unreadable ({e}): delete it and re-run {PREPARE_HINT}") from None
    if meta.get("version") != CACHE_VERSION:
        raise CacheError(f"{meta_path} has format version {meta.get('version')}, this code reads "
                         f"{CACHE_VERSION}: re-run {PREPARE_HINT}")
    return meta


def open_array(cache_dir: Path, entry: dict[str, Any], size: int) -> np.memmap:
    """The whole array ``entry`` of meta.json describes, checked against its header and byte size."""
    path = Path(cache_dir) / entry["file"]
    n = entry["num_images"]
    if not path.is_file():
        raise CacheError(f"{path} is missing: re-run {PREPARE_HINT} --cache-dir {cache_dir}")
    shape, dtype, header = npy_layout(path)
    if shape != (n, 3, size, size) or dtype != np.uint8:
        raise CacheError(f"{path} holds {dtype} {list(shape)}, expected uint8 {[n, 3, size, size]}: "
                         f"re-run {PREPARE_HINT}")
    expected = header + n * 3 * size * size
    actual = path.stat().st_size
    if actual != expected:
        raise CacheError(f"{path} is {actual} bytes, its header implies {expected}: the file is truncated or "
                         f"damaged; re-run {PREPARE_HINT} --cache-dir {cache_dir}")
    return np.load(path, mmap_mode="r")


def check_max_images(max_images: int | None) -> None:
    """Refuse a request for fewer than one image (0 would be an empty run, -1 the last image dropped)."""
    if max_images is not None and max_images < 1:
        raise PrepareError(f"max_images must be at least 1, got {max_images}")


def wanted_count(meta: dict[str, Any], max_images: int | None) -> int | None:
    """Images a request for ``max_images`` (None = all) needs, or None when the cache cannot tell."""
    check_max_images(max_images)
    total = meta.get("total_images")
    if max_images is None:
        return total
    return max_images if total is None else min(max_images, total)


def unusable(meta: dict[str, Any], size: int, count: int | None, decoder: str | None = None) -> str | None:
    """Why the cache cannot serve ``count`` images at ``size`` (``decoder`` None = any), or None when it can."""
    entry = meta["arrays"].get(str(size))
    if entry is None:
        return f"it has no array for size {size} (it has {', '.join(sorted(meta['arrays'], key=int)) or 'none'})"
    if count is None:
        return f"it holds the first {entry['num_images']} images at size {size}, and this run wants all of them"
    if entry["num_images"] < count:
        return f"it holds {entry['num_images']} images at size {size}, this run needs {count}"
    if decoder is not None and entry["decoder"] != decoder:
        return f"its size {size} was decoded with {entry['decoder']}, not {decoder}"
    return None


def open_cache(cache_dir: str | Path, sizes: Sequence[int], annotation_file: str | Path | None = None,
               max_images: int | None = None, decoder: str | None = None) -> Cache:
    """Open and validate a view of the first ``max_images`` images (None = all) at ``sizes``.

    Args:
        cache_dir: the cache folder.
        sizes: the square input sizes the caller needs.
        annotation_file: when given, the cache must have been made from a file
            with the same content; when None, the recorded file is checked if
            it still exists.
        max_images: how many images (the first ones of the annotation file); None = every image.
        decoder: the decoder the arrays must have been made with; None = any.

    Raises:
        CacheError: missing, unfinished, stale (annotation file changed),
            without a size or with too few images, or an array file damaged.
    """
    cache_dir = Path(cache_dir)
    meta = read_meta(cache_dir)
    recorded = meta["annotation_file"]
    check = Path(annotation_file) if annotation_file is not None else Path(recorded["path"])
    if annotation_file is not None and not check.is_file():
        raise CacheError(f"annotation file {check} does not exist")
    if check.is_file() and not same_file_content(recorded, check):
        raise CacheError(f"the cache in {cache_dir} is stale: it was made from {recorded['path']} "
                         f"(sha256 {recorded['sha256'][:12]}...), and {check} has different content; re-run "
                         f"{PREPARE_HINT} --cache-dir {cache_dir}")
    count = wanted_count(meta, max_images)
    for s in sizes:
        why = unusable(meta, int(s), count, decoder)
        if why is not None:
            raise CacheError(f"the cache in {cache_dir} cannot serve this run: {why}; run python -m qsl.cache.prepare "
                             f"--image-size {' '.join(map(str, sizes))} with this --cache-dir (adds to it)")
    arrays = {int(s): open_array(cache_dir, meta["arrays"][str(s)], int(s))[:count] for s in sizes}
    skipped = {}
    for s in sizes:
        for item in meta["arrays"][str(s)].get("skipped", []):
            if item["qsl_idx"] < count:
                skipped[item["qsl_idx"]] = item
    return Cache(cache_dir=cache_dir, meta=meta, arrays=arrays, images=meta["images"][:count],
                 skipped=[skipped[i] for i in sorted(skipped)])


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write JSON crash-safely (temporary name, fsync, rename over ``path``)."""
    replace_atomically(path, json.dumps(doc))
