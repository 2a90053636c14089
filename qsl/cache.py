"""The preprocessed image cache on disk, and opening it for reading.

Layout of a cache folder (written by :mod:`qsl.prepare`):

- ``images_<S>.npy``: one uint8 array ``[N, 3, S, S]`` (RGB, resized to S x S,
  not normalized) per input size S, in ``.npy`` format so it can be
  memory-mapped. Row ``i`` is ``qsl_idx`` ``i``: the position of the image in
  the annotation file's ``images`` list. Every image is kept, with or without
  annotations; images skipped as bad keep their row, filled with zeros.
- ``meta.json``: written last, by rename, so its presence means the arrays are
  complete. It records the format version, sizes, decoder, the annotation
  file (path, size, mtime, sha256), per image ``qsl_idx, id, file_name,
  width, height``, skipped images with the reason, and each array's shape and
  byte size.

Assumptions: the image files themselves are not re-checked when a cache is
opened (that would cost a full decode); the annotation file is, by size and
mtime, falling back to its sha256 when those differ.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from harness.shared.errors import InputError
from harness.shared.files import replace_atomically

CACHE_VERSION = 1
META_NAME = "meta.json"
PREPARE_HINT = "python -m qsl.prepare --data DIR --image-size A B"


class CacheError(InputError, RuntimeError):
    """The cache is missing, stale, incomplete or made for other sizes; the message says what to do."""


class PrepareError(CacheError):
    """Preparation cannot proceed; the message names the file and what to do."""


def array_name(size: int) -> str:
    return f"images_{size}.npy"


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
    """An opened, validated cache. Arrays are read-only memory maps."""

    cache_dir: Path
    meta: dict[str, Any]
    arrays: dict[int, np.memmap]                 # {S: uint8 memmap [N, 3, S, S]}
    image_hw: np.ndarray = field(init=False)     # int64 [N, 2]: original (height, width) in pixels
    image_ids: np.ndarray = field(init=False)    # int64 [N]: COCO image id per qsl_idx

    def __post_init__(self) -> None:
        images = self.meta["images"]
        self.image_hw = np.array([[im["height"], im["width"]] for im in images], dtype=np.int64).reshape(-1, 2)
        self.image_ids = np.array([im["id"] for im in images], dtype=np.int64)

    @property
    def num_images(self) -> int:
        return len(self.meta["images"])

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(self.arrays)

    @property
    def skipped(self) -> list[dict[str, Any]]:
        """Images skipped as bad during preparation: [{qsl_idx, id, file_name, reason}]."""
        return list(self.meta.get("skipped", []))


def read_meta(cache_dir: Path) -> dict[str, Any]:
    meta_path = cache_dir / META_NAME
    if not meta_path.is_file():
        raise CacheError(f"no preprocessed cache in {cache_dir} ({META_NAME} missing, or preparation did not "
                         f"finish): run {PREPARE_HINT} --cache-dir {cache_dir}")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise CacheError(f"{meta_path} is unreadable ({e}): delete it and re-run {PREPARE_HINT}") from None
    if meta.get("version") != CACHE_VERSION:
        raise CacheError(f"{meta_path} has format version {meta.get('version')}, this code reads "
                         f"{CACHE_VERSION}: re-run {PREPARE_HINT}")
    return meta


def _open_array(cache_dir: Path, meta: dict[str, Any], size: int) -> np.memmap:
    path = cache_dir / array_name(size)
    n = len(meta["images"])
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


def open_cache(cache_dir: str | Path, sizes: Sequence[int], annotation_file: str | Path | None = None) -> Cache:
    """Open and validate a cache holding (at least) ``sizes``.

    Args:
        cache_dir: the cache folder.
        sizes: the square input sizes the caller needs.
        annotation_file: when given, the cache must have been made from a file
            with the same content; when None, the recorded file is checked if
            it still exists.

    Raises:
        CacheError: missing, unfinished, stale (annotation file changed),
            made for other sizes, or an array file truncated.
    """
    cache_dir = Path(cache_dir)
    meta = read_meta(cache_dir)
    missing = [s for s in sizes if s not in meta["sizes"]]
    if missing:
        raise CacheError(f"the cache in {cache_dir} was made for image sizes {meta['sizes']}, not {missing}: run "
                         f"python -m qsl.prepare --image-size {' '.join(map(str, sizes))} with this --cache-dir "
                         f"(replaces it) or another --cache-dir")
    recorded = meta["annotation_file"]
    check = Path(annotation_file) if annotation_file is not None else Path(recorded["path"])
    if annotation_file is not None and not check.is_file():
        raise CacheError(f"annotation file {check} does not exist")
    if check.is_file() and not same_file_content(recorded, check):
        raise CacheError(f"the cache in {cache_dir} is stale: it was made from {recorded['path']} "
                         f"(sha256 {recorded['sha256'][:12]}...), and {check} has different content; re-run "
                         f"{PREPARE_HINT} --cache-dir {cache_dir}")
    arrays = {int(s): _open_array(cache_dir, meta, int(s)) for s in sizes}
    return Cache(cache_dir=cache_dir, meta=meta, arrays=arrays)


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write JSON crash-safely (temporary name, fsync, rename over ``path``)."""
    replace_atomically(path, json.dumps(doc))
