"""Every value the harness reads from an annotation file is checked before anything runs: one line, exit 2.

The QSL and the cache read images' ids, file names and sizes; the box conversion image and category ids;
COCOeval the annotations' ids, boxes, areas and crowd flags; the demo's pictures category names.
"""
from __future__ import annotations

import pytest

import run
from harness.accuracy.coco import AccuracyError
from harness.accuracy.evaluate import evaluate_accuracy_log
from tests.test_accuracy_errors import ANN, _coco_copy, _full_log


def _set(key: str, n: int, field: str, value):
    return lambda doc: doc[key][n].__setitem__(field, value)


# Every field the QSL, the box conversion, COCOeval or the demo's pictures read, with a value of the wrong kind.
@pytest.mark.parametrize("edit, where", [
    (_set("annotations", 0, "bbox", "oops"), "annotations[0] (id 1) has bbox 'oops', expected [x, y, width, height]"),
    (_set("annotations", 1, "bbox", [1, 2, 3]), "annotations[1] (id 2) has bbox [1, 2, 3], expected"),
    (_set("annotations", 0, "bbox", [1, 2, "3", 4]), "has bbox [1, 2, '3', 4], expected"),
    (_set("annotations", 0, "bbox", [1, 2, float("nan"), 4]), "has bbox [1, 2, nan, 4], expected"),
    (_set("annotations", 0, "bbox", [1, 2, -3, 4]), "has bbox [1, 2, -3, 4], expected"),
    (_set("annotations", 0, "area", "big"), "annotations[0] (id 1) has area 'big', expected a finite number"),
    (_set("annotations", 0, "iscrowd", 2), "has iscrowd 2, expected 0 or 1"),
    (_set("annotations", 0, "image_id", "7"), "has image_id '7', expected an integer id"),
    (_set("annotations", 0, "category_id", 1.5), "has category_id 1.5, expected an integer id"),
    (_set("annotations", 0, "id", [1]), "annotations[0] has id [1], expected an integer id"),
    (_set("images", 2, "width", "wide"), "images[2] (id 100014) has width 'wide', expected an integer number of pixels"),
    (_set("images", 0, "height", 0), "images[0] (id 100000) has height 0, expected an integer number of pixels"),
    (_set("images", 0, "file_name", None), "has file_name null, expected a non-empty string"),
    (_set("images", 0, "id", True), "images[0] has id true, expected an integer id"),
    (_set("categories", 0, "id", "abc"), "categories[0] has id 'abc', expected an integer id"),
    (lambda doc: doc["categories"][0].pop("name"), "categories[0] lacks name"),
])
def test_annotation_values_are_checked(tmp_path, synthetic_coco, edit, where):
    data = _coco_copy(tmp_path, synthetic_coco, edit)
    with pytest.raises(AccuracyError) as info:
        evaluate_accuracy_log(_full_log(tmp_path, synthetic_coco), data / ANN)
    message = str(info.value)
    assert message.startswith(f"annotation file {data / ANN}: ") and where in message and "\n" not in message


def test_a_bad_annotation_value_stops_a_run_before_anything_runs(capsys, tmp_path, synthetic_coco, fast_conf):
    data = _coco_copy(tmp_path, synthetic_coco, _set("annotations", 3, "bbox", "oops"))
    out, cache = tmp_path / "out", tmp_path / "cache"
    rc = run.main(["--backend", "null", "--mode", "accuracy", "--data", str(data), "--cache-dir", str(cache),
                   "--output", str(out), "--user-conf", str(fast_conf), "--backbone", "resnet18",
                   "--image-size", "64", "64", "--num-classes", "7", "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"error: annotation file {data / ANN}: annotations[3] (id 4) has bbox "
                                            "'oops', expected [x, y, width, height]: 4 finite numbers, width and "
                                            "height 0 or more; correct the entry, or pass the data set's own "
                                            "instances_*.json (--annotation-file)")
    assert not cache.exists() and not any(out.rglob("mlperf_log_*"))   # no image prepared, LoadGen never ran
