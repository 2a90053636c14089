"""The data a run reads: the QSL over the preprocessed cache, and what the accuracy check needs.

``open_dataset`` prepares the cache when it is missing (``qsl.prepare.ensure_cache``),
opens the QSL over it and records the annotation file (whose ``images`` list
the qsl indices point into) and the images the cache skipped as unreadable.
Tests and the harness-capacity benchmark pass a :class:`Dataset` around an
in-memory QSL instead, with no annotation file (no accuracy figure then).
For a CUDA backend the QSL's batches are pinned host memory (:func:`pin_memory_for`),
so their copies to the GPU run asynchronously on the backend's copy stream.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from harness.config import DataConfig


@dataclass
class Dataset:
    qsl: Any                                  # CocoQSL-like: total_count, perf_count, load, unload, get_batch
    annotation_file: Path | None = None       # COCO annotation JSON; None = no accuracy evaluation
    skipped: list[str] = field(default_factory=list)  # file names the cache could not read

    @property
    def total_count(self) -> int:
        return int(self.qsl.total_count)


def pin_memory_for(backend: Any) -> bool:
    """Whether batches for ``backend`` should be pinned: its ``device`` is CUDA (no device = CPU)."""
    return str(getattr(backend, "device", "cpu")).startswith("cuda")


def open_dataset(data: DataConfig, sizes: Sequence[int], perf_count: int | None = None,
                 progress: bool = True, pin_memory: bool = False) -> Dataset:
    """Prepare (if needed) and open the cache for ``sizes``; raises the QSL package's errors.

    ``pin_memory``: the QSL builds its batches in pinned host memory (needs CUDA; see :func:`pin_memory_for`).
    """
    from qsl.coco_qsl import CocoQSL
    from qsl.prepare import ensure_cache

    cache = ensure_cache(data.data_dir, sizes, data.cache_dir, data.annotation_file,
                         max_images=data.max_images, skip_bad=data.skip_bad_images, progress=progress)
    ann = Path(data.annotation_file) if data.annotation_file else Path(cache.meta["annotation_file"]["path"])
    skipped = [str(s.get("file_name", s.get("qsl_idx"))) for s in cache.skipped]
    return Dataset(qsl=CocoQSL(cache, perf_count=perf_count, pin_memory=pin_memory), annotation_file=ann, skipped=skipped)
