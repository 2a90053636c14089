"""The data a run reads: the QSL over the preprocessed cache, and what the accuracy check needs.

``open_dataset`` checks the annotation file's COCO structure (``images``,
``annotations`` and ``categories`` lists, :func:`harness.coco_eval.read_annotations`)
before anything else, so a wrong file is an error before the cache is prepared
or LoadGen starts, not after the accuracy run. It then prepares the cache when
it is missing (``qsl.cache.prepare.ensure_cache``), opens the QSL over it and records
the annotation file (whose ``images`` list the qsl indices point into), its
number of categories and the images the cache skipped as unreadable.
Tests and the harness-capacity benchmark pass a :class:`Dataset` around an
in-memory QSL instead, with no annotation file (no accuracy figure then).
For a CUDA backend the QSL's batches are pinned host memory (:func:`pin_memory_for`),
so their copies to the GPU run asynchronously on the backend's copy stream.

The label contract (harness/accuracy/coco.py ``records_to_coco``): a model with
``num_classes`` C predicts labels 1..C-1 (0 is background), and label i is the
i-th category of the annotation file by ascending id. So C - 1 must equal the
number of categories; :func:`check_num_classes` says so before a run.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from harness.accuracy.coco import AccuracyError, read_annotations
from harness.settings.config import DataConfig

log = logging.getLogger("harness")


class NumClassesError(AccuracyError):
    """The model's class count does not fit the annotation file's categories; the message says both."""


@dataclass
class Dataset:
    qsl: Any                                  # CocoQSL-like: total_count, perf_count, load, unload, get_batch
    annotation_file: Path | None = None       # COCO annotation JSON; None = no accuracy evaluation
    skipped: list[str] = field(default_factory=list)  # file names the cache could not read
    num_categories: int | None = None         # len(categories) of annotation_file; None = not read yet

    @property
    def total_count(self) -> int:
        return int(self.qsl.total_count)


def pin_memory_for(backend: Any) -> bool:
    """Whether batches for ``backend`` should be pinned: its ``device`` is CUDA (no device = CPU)."""
    return str(getattr(backend, "device", "cpu")).startswith("cuda")


def check_num_classes(num_classes: int, dataset: Dataset) -> None:
    """Raise :class:`NumClassesError` unless ``num_classes - 1`` equals the data set's number of categories.

    Call it before any run that computes an mAP (accuracy, submission, ``run.py evaluate``); a data set
    without an annotation file passes (nothing is scored).
    """
    if dataset.annotation_file is None:
        return
    if dataset.num_categories is None:
        dataset.num_categories = len(read_annotations(dataset.annotation_file)["categories"])
    cats = dataset.num_categories
    if num_classes - 1 != cats:
        raise NumClassesError(
            f"the model has num_classes={num_classes} (labels 1..{num_classes - 1}, 0 = background) but "
            f"annotation file {dataset.annotation_file} has {cats} categories, so its labels cannot map onto "
            f"them: use a model with num_classes={cats + 1} (--num-classes / model.num_classes) or the data "
            "set it was trained for")


def open_dataset(data: DataConfig, sizes: Sequence[int], perf_count: int | None = None,
                 progress: bool = True, pin_memory: bool = False) -> Dataset:
    """Check the annotation file, prepare the cache if needed and open it for ``sizes``.

    ``pin_memory``: the QSL builds its batches in pinned host memory (needs CUDA; see :func:`pin_memory_for`).

    Raises:
        AnnotationError: the annotation file is not COCO detection format (names the file and the key).
        CacheError: the QSL package's errors (missing files, unreadable images, unwritable cache).
    """
    from qsl.coco_layout import find_annotation_file
    from qsl.coco_qsl import CocoQSL
    from qsl.cache.prepare import ensure_cache

    ann = find_annotation_file(data.data_dir, data.annotation_file)   # the images are needed only to prepare
    doc = read_annotations(ann)
    num_categories = len(doc["categories"])
    if not doc["annotations"]:
        log.warning("annotation file %s has no annotations: an accuracy run will give no mAP", ann)
    del doc
    cache = ensure_cache(data.data_dir, sizes, data.cache_dir, data.annotation_file,
                         max_images=data.max_images, skip_bad=data.skip_bad_images, progress=progress)
    ann = Path(data.annotation_file) if data.annotation_file else Path(cache.meta["annotation_file"]["path"])
    skipped = [str(s.get("file_name", s.get("qsl_idx"))) for s in cache.skipped]
    return Dataset(qsl=CocoQSL(cache, perf_count=perf_count, pin_memory=pin_memory), annotation_file=ann,
                   skipped=skipped, num_categories=num_categories)
