"""Direct evaluation without LoadGen: every image once, in order, then COCO mAP.

The same pieces as a LoadGen accuracy run, only driven by a plain loop: the
QSL's ``get_batch``, ``backend.predict``, the response record of
``harness/sut/response.py`` and the evaluation of ``harness/accuracy/evaluate.py``. So an
accuracy run and this loop give the same mAP for the same model and images
(per-image results do not depend on the batch). Images are loaded into the
QSL a chunk at a time, so memory stays bounded as in LoadGen's accuracy mode.

Everything that can be checked is checked before the first image is predicted:
the detections file is writable, and the model's class count fits the
annotation file's categories (``harness.dataset.check_num_classes``). The
detections are written after the mAP is computed, and a failed write keeps
the mAP in its message.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ground.progress import Progress
from harness.accuracy.coco import AccuracyError
from harness.accuracy.evaluate import AccuracyReport, evaluate_records
from harness.run.dataset import Dataset, check_num_classes
from ground.files import check_output_file
from harness.sut.response import to_record

log = logging.getLogger("harness")

CHUNK = 256  # images resident in the QSL at a time


def predict_all(backend: Any, qsl: Any, batch_size: int, progress: bool = True) -> dict[int, np.ndarray]:
    """Records for qsl indices 0..total_count-1: {qsl_idx: float32 [K, 7]} (see harness/sut/response.py)."""
    records: dict[int, np.ndarray] = {}
    total = int(qsl.total_count)
    with Progress("evaluate", total=total, unit="images", enabled=progress, logger=log) as bar:
        for start in range(0, total, CHUNK):
            chunk = list(range(start, min(start + CHUNK, total)))
            qsl.load(chunk)
            try:
                for b in range(0, len(chunk), batch_size):
                    idx = chunk[b:b + batch_size]
                    dets = backend.predict(*qsl.get_batch(idx))
                    for i, d in zip(idx, dets):
                        records[i] = to_record(d, i)
                    bar.update(len(idx))
            finally:
                qsl.unload(chunk)
    return records


def backend_num_classes(backend: Any) -> int | None:
    """The class count of ``backend``'s model (``num_classes`` or ``cfg.num_classes``), or None if it has none."""
    n = getattr(backend, "num_classes", None)
    if n is None:
        n = getattr(getattr(backend, "cfg", None), "num_classes", None)
    return None if n is None else int(n)


def evaluate_direct(backend: Any, dataset: Dataset, batch_size: int = 8, dump_detections: str | Path | None = None,
                    use_pycocotools: bool = False, progress: bool = True,
                    num_classes: int | None = None) -> AccuracyReport:
    """Run ``backend`` over the whole data set and evaluate it; optionally write the COCO results list.

    ``num_classes`` defaults to the backend's (:func:`backend_num_classes`).

    Raises (before any prediction): AccuracyError (no annotation file), NumClassesError (the model's labels
    cannot map onto the categories), OutputError (``dump_detections`` not writable).
    """
    if dataset.annotation_file is None:
        raise AccuracyError("this data set has no annotation file to evaluate against")
    if dump_detections:
        check_output_file(dump_detections, "--dump-detections")
    num_classes = num_classes if num_classes is not None else backend_num_classes(backend)
    if num_classes is not None:
        check_num_classes(num_classes, dataset)
    records = predict_all(backend, dataset.qsl, batch_size, progress)
    return evaluate_records(records, dataset.annotation_file, expected=range(dataset.total_count),
                            skipped=dataset.skipped, use_pycocotools=use_pycocotools,
                            dump_detections=dump_detections)
