"""Response records -> COCO detections -> the 12 COCO bbox statistics.

The second box conversion of the project (the first is ``harness/sut/response.py``):
normalized y-first records become COCO results in ORIGINAL pixels,
``bbox = [x, y, width, height]`` from the top-left corner (COCO's own xywh),
and class index i (1..C-1) becomes ``category_ids[i - 1]`` where
``category_ids`` are the annotation file's category ids sorted ascending
(MLPerf's inverse label map, ``[0] + ids``). Both the LoadGen accuracy script
and ``run.py evaluate`` go through these functions.

Evaluation uses faster-coco-eval (same numbers, about 10x faster) unless
pycocotools is asked for. An annotation file is checked for the COCO detection
structure (``images``, ``annotations``, ``categories`` lists, each value of the
kind its reader needs: annotation_fields.py) before either library sees it, so
a wrong file is one clear error rather than a traceback after a long run. An empty ``annotations`` list is
legal COCO, but COCOeval then reports -1 for every statistic: that is
:class:`MapNotComputed`, never a number.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ground.errors import InputError
from harness.accuracy.annotation_fields import REQUIRED_FIELDS, bad_field
from harness.sut.response import RECORD_FLOATS
from qsl.coco_layout import repeated_ids

logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)  # it logs its summary table at INFO

STAT_NAMES = (
    "AP @[IoU=0.50:0.95 | area=all | maxDets=100]",
    "AP @[IoU=0.50      | area=all | maxDets=100]",
    "AP @[IoU=0.75      | area=all | maxDets=100]",
    "AP @[IoU=0.50:0.95 | area=small | maxDets=100]",
    "AP @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "AP @[IoU=0.50:0.95 | area=large | maxDets=100]",
    "AR @[IoU=0.50:0.95 | area=all | maxDets=1]",
    "AR @[IoU=0.50:0.95 | area=all | maxDets=10]",
    "AR @[IoU=0.50:0.95 | area=all | maxDets=100]",
    "AR @[IoU=0.50:0.95 | area=small | maxDets=100]",
    "AR @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "AR @[IoU=0.50:0.95 | area=large | maxDets=100]",
)


class AccuracyError(InputError, ValueError):
    """The accuracy log or the annotations cannot be evaluated; the message says what and where."""


class AnnotationError(AccuracyError):
    """The annotation file is not COCO detection format; the message names the file and what is missing."""


class MapNotComputed(AccuracyError):
    """COCOeval found no ground truth to score against (its stats are -1); the message says why."""


def check_annotations(doc: Any, path: str | Path) -> dict:
    """Return ``doc`` if it has the COCO detection structure, else raise :class:`AnnotationError`.

    Needed: a JSON object with ``images``, ``annotations`` and ``categories``, each a list
    (possibly empty) of objects carrying :data:`REQUIRED_FIELDS`, each value of its kind
    (harness/accuracy/annotation_fields.py), no id repeated within a list.
    """
    if not isinstance(doc, dict):
        raise AnnotationError(f"annotation file {path} is not COCO format: its top level is a "
                              f"{type(doc).__name__}, expected an object with images, annotations and categories")
    for key, fields in REQUIRED_FIELDS.items():
        if key not in doc:
            raise AnnotationError(f"annotation file {path} has no {key!r} key: COCO detection format needs "
                                  "'images', 'annotations' and 'categories' lists; pass the instances_*.json "
                                  "file of the data set (--annotation-file)")
        items = doc[key]
        if not isinstance(items, list):
            raise AnnotationError(f"annotation file {path}: {key!r} is a {type(items).__name__}, expected a list")
        for n, item in enumerate(items):
            lacks = [f for f in fields if f not in item] if isinstance(item, dict) else list(fields)
            if lacks:
                raise AnnotationError(f"annotation file {path}: {key}[{n}] lacks {', '.join(lacks)} "
                                      f"(every entry of {key!r} needs {', '.join(fields)})")
    problem = bad_field(doc, str(path))
    if problem:
        raise AnnotationError(problem)
    for key, what in (("images", "image id"), ("annotations", "annotation id"), ("categories", "category id")):
        problem = repeated_ids(path, doc[key], what, key)
        if problem:
            raise AnnotationError(problem)
    return doc


def read_annotations(path: str | Path) -> dict:
    """Parse and check one annotation file (see :func:`check_annotations`)."""
    try:
        doc = json.loads(Path(path).read_bytes())
    except OSError as e:
        raise AnnotationError(f"cannot read annotation file {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise AnnotationError(f"annotation file {path} is not valid JSON ({e})") from None
    return check_annotations(doc, path)


def records_to_coco(records: Mapping[int, np.ndarray], images: Sequence[Mapping], category_ids: Sequence[int]
                    ) -> np.ndarray:
    """Convert response records to COCO result rows.

    Args:
        records: qsl_idx -> float32 [K, 7] ``[qsl_idx, ymin, xmin, ymax, xmax, score, label]``
            (normalized box, label = class index 1..C-1); K may be 0.
        images: the annotation file's ``images`` list; ``images[qsl_idx]`` has id, width, height.
        category_ids: the annotation file's category ids, sorted ascending.

    Returns:
        float64 [N, 7]: ``[image_id, x, y, width, height, score, category_id]``, box in original pixels.
    """
    cats = np.asarray([0] + list(category_ids), dtype=np.float64)
    rows = []
    for idx, rec in records.items():
        if rec.shape[0] == 0:
            continue
        img = images[idx]
        w, h = float(img["width"]), float(img["height"])
        r = rec.astype(np.float64)
        labels = r[:, 6]
        bad = (labels < 1) | (labels > len(category_ids)) | (labels != np.round(labels))
        if bad.any():
            raise AccuracyError(f"sample {idx} has label {labels[bad][0]:g}, outside 1..{len(category_ids)} "
                                f"(the annotation file has {len(category_ids)} categories); the model's "
                                "num_classes does not match the data set")
        out = np.empty((r.shape[0], 7), dtype=np.float64)
        out[:, 0] = img["id"]
        out[:, 1] = r[:, 2] * w                   # x = xmin * W
        out[:, 2] = r[:, 1] * h                   # y = ymin * H
        out[:, 3] = (r[:, 4] - r[:, 2]) * w       # width
        out[:, 4] = (r[:, 3] - r[:, 1]) * h       # height
        out[:, 5] = r[:, 5]
        out[:, 6] = cats[labels.astype(np.int64)]
        rows.append(out)
    return np.concatenate(rows) if rows else np.zeros((0, 7), dtype=np.float64)


def coco_result_list(rows: np.ndarray) -> list[dict]:
    """COCO results JSON objects (image_id, category_id, bbox [x, y, width, height] in pixels, score)."""
    return [{"image_id": int(r[0]), "category_id": int(r[6]), "bbox": [float(r[1]), float(r[2]), float(r[3]),
             float(r[4])], "score": float(r[5])} for r in rows]


def load_ground_truth(annotation_file: str | Path, use_pycocotools: bool = False):
    """The checked annotation file as the chosen library's COCO object (its index printout silenced)."""
    if use_pycocotools:
        from pycocotools.coco import COCO
    else:
        from faster_coco_eval import COCO
    doc = read_annotations(annotation_file)
    gt = COCO()
    gt.dataset = doc
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
    except (ValueError, KeyError, TypeError) as e:
        raise AnnotationError(f"annotation file {annotation_file} cannot be indexed: {e!r}") from None
    return gt


def why_no_map(gt, image_ids: Iterable[int], annotation_file: str | Path) -> str:
    """The reason COCOeval returned -1 for mAP over ``image_ids``: no ground truth there to score against."""
    ids = set(int(i) for i in image_ids)
    if not gt.dataset["annotations"]:
        return f"the annotation file {annotation_file} has an empty 'annotations' list: there is nothing to score"
    if not gt.dataset["categories"]:
        return f"the annotation file {annotation_file} has an empty 'categories' list: there is nothing to score"
    if not any(int(a["image_id"]) in ids for a in gt.dataset["annotations"]):
        return (f"none of the {len(ids)} evaluated images has an object in {annotation_file}: "
                "there is nothing to score (evaluate images that have annotations)")
    return (f"the objects of the {len(ids)} evaluated images in {annotation_file} have category ids missing "
            "from its 'categories' list: there is nothing to score")


def evaluate_rows(gt, rows: np.ndarray, image_ids: Iterable[int], use_pycocotools: bool = False,
                  verbose: bool = False) -> list[float]:
    """COCOeval "bbox" over ``image_ids`` only; returns the 12 stats (stats[0] = mAP@[.5:.95])."""
    if use_pycocotools:
        from pycocotools.cocoeval import COCOeval as Eval
    else:
        from faster_coco_eval import COCOeval_faster as Eval
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        dt = gt.loadRes(rows) if len(rows) else _empty_results(gt, use_pycocotools)
        ev = Eval(gt, dt, iouType="bbox")
        ev.params.imgIds = sorted(set(int(i) for i in image_ids))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if verbose:
        print(out.getvalue(), end="")
    return [float(s) for s in ev.stats[:12]]


def _empty_results(gt, use_pycocotools: bool):
    """A result set with no detections (``loadRes`` rejects an empty list)."""
    if use_pycocotools:
        from pycocotools.coco import COCO
    else:
        from faster_coco_eval import COCO
    dt = COCO()
    dt.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]),
                  "annotations": []}
    dt.createIndex()
    return dt


def check_record(data: np.ndarray, idx: int) -> np.ndarray:
    """Reshape one sample's floats to [K, 7]; fewer than 7 floats means no detections."""
    if data.size < RECORD_FLOATS:
        return data[:0].reshape(0, RECORD_FLOATS)
    if data.size % RECORD_FLOATS:
        raise AccuracyError(f"sample {idx}: {data.size} floats is not a whole number of 7-float records")
    return data.reshape(-1, RECORD_FLOATS)
