"""The accuracy script against pycocotools run directly on the same detections."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from harness.accuracy.cli import main
from harness.accuracy.coco import AccuracyError
from harness.accuracy.evaluate import evaluate_accuracy_log


def _annotations(root):
    return json.loads((root / "annotations" / "instances_val2017.json").read_text())


def _records(ann, seed=0):
    """Per image: its ground-truth boxes jittered by a few pixels, as 7-float records, plus a false positive."""
    rng = np.random.default_rng(seed)
    cats = sorted(c["id"] for c in ann["categories"])
    pos = {im["id"]: i for i, im in enumerate(ann["images"])}
    recs = {i: [] for i in range(len(ann["images"]))}
    for a in ann["annotations"]:
        i = pos[a["image_id"]]
        im = ann["images"][i]
        x, y, w, h = np.asarray(a["bbox"]) + rng.normal(0, 3, 4)
        W, H = im["width"], im["height"]
        recs[i].append([i, y / H, x / W, (y + h) / H, (x + w) / W, rng.uniform(0.2, 1), cats.index(a["category_id"]) + 1])
        recs[i].append([i, 0.1, 0.1, 0.3, 0.3, rng.uniform(0, 0.5), rng.integers(1, len(cats) + 1)])
    return {i: np.asarray(r, np.float32).reshape(-1, 7) for i, r in recs.items()}


def _write_log(path, entries):
    """LoadGen's layout: a list of {seq_id, qsl_idx, data = uppercase hex of the response bytes}."""
    path.write_text(json.dumps([{"seq_id": n, "qsl_idx": i, "data": r.tobytes().hex().upper()}
                                for n, (i, r) in enumerate(entries)]))
    return path


def _pycocotools_direct(ann_file, ann, recs):
    """The obvious computation: plain-Python boxes, pycocotools loadRes + COCOeval over the logged images."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    cats = sorted(c["id"] for c in ann["categories"])
    dets = []
    for i, rec in recs.items():
        im = ann["images"][i]
        for _, ymin, xmin, ymax, xmax, score, label in rec:
            dets.append({"image_id": im["id"], "category_id": cats[int(label) - 1], "score": float(score),
                         "bbox": [float(xmin) * im["width"], float(ymin) * im["height"],
                                  (float(xmax) - float(xmin)) * im["width"], (float(ymax) - float(ymin)) * im["height"]]})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.imgIds = sorted(ann["images"][i]["id"] for i in recs)
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return list(ev.stats)


def test_map_equals_pycocotools_direct_with_duplicates_and_empty(tmp_path, synthetic_coco):
    ann_file = synthetic_coco / "annotations" / "instances_val2017.json"
    ann = _annotations(synthetic_coco)
    recs = _records(ann)
    assert any(r.shape[0] == 0 for r in recs.values())            # image 1 has no objects: empty response
    entries = list(recs.items()) + [(3, np.zeros((0, 7), np.float32)), (4, recs[4][:1])]  # duplicates, ignored
    log = _write_log(tmp_path / "mlperf_log_accuracy.json", entries)
    expected = _pycocotools_direct(ann_file, ann, recs)
    fast = evaluate_accuracy_log(log, ann_file)
    slow = evaluate_accuracy_log(log, ann_file, use_pycocotools=True)
    assert slow.stats == expected                                  # same library: bit for bit
    assert fast.stats == pytest.approx(expected, abs=1e-12)       # faster-coco-eval: same up to summation order
    assert 0.3 < fast.map < 1.0
    assert fast.duplicates == 2 and fast.empty == 1 and fast.missing == 0
    assert fast.images_evaluated == len(ann["images"])


def test_missing_samples_are_counted_and_excluded(tmp_path, synthetic_coco):
    ann_file = synthetic_coco / "annotations" / "instances_val2017.json"
    ann = _annotations(synthetic_coco)
    recs = {i: r for i, r in _records(ann).items() if i < 5}
    log = _write_log(tmp_path / "log.json", list(recs.items()))
    report = evaluate_accuracy_log(log, ann_file)
    assert report.missing == len(ann["images"]) - 5 and report.images_evaluated == 5
    assert report.stats == pytest.approx(_pycocotools_direct(ann_file, ann, recs), abs=1e-12)


def test_cli_prints_map_and_writes_outputs(tmp_path, synthetic_coco, capsys):
    ann = _annotations(synthetic_coco)
    recs = _records(ann)
    log = _write_log(tmp_path / "log.json", list(recs.items()))
    rc = main(["--mlperf-accuracy-file", str(log), "--coco-dir", str(synthetic_coco),
               "--output-file", str(tmp_path / "accuracy.txt"), "--dump-detections", str(tmp_path / "dets.json")])
    out = capsys.readouterr().out
    assert rc == 0
    first = out.splitlines()[0]
    assert first.startswith("mAP=") and first.endswith("%")
    assert (tmp_path / "accuracy.txt").read_text().splitlines()[0] == first
    dets = json.loads((tmp_path / "dets.json").read_text())
    assert len(dets) == sum(r.shape[0] for r in recs.values())
    assert {d["category_id"] for d in dets} <= {c["id"] for c in ann["categories"]}


def test_bad_logs_give_clear_errors(tmp_path, synthetic_coco):
    ann_file = synthetic_coco / "annotations" / "instances_val2017.json"
    (tmp_path / "junk.json").write_text("this is not json")
    with pytest.raises(AccuracyError, match="not a LoadGen accuracy log"):
        evaluate_accuracy_log(tmp_path / "junk.json", ann_file)
    bad_label = np.float32([[0, 0.1, 0.1, 0.2, 0.2, 0.9, 7]])   # 6 categories: labels 1..6
    with pytest.raises(AccuracyError, match="label 7, outside 1..6"):
        evaluate_accuracy_log(_write_log(tmp_path / "l.json", [(0, bad_label)]), ann_file)
    with pytest.raises(AccuracyError, match="qsl_idx 99"):
        evaluate_accuracy_log(_write_log(tmp_path / "i.json", [(99, bad_label[:, :0])]), ann_file)
    (tmp_path / "k.json").write_text('[{"seq_id": 0, "qsl_idx": 0, "data": "XYZ"}]')
    with pytest.raises(AccuracyError, match="entry 0 is malformed"):
        evaluate_accuracy_log(tmp_path / "k.json", ann_file)


def test_truncated_log_is_read_up_to_last_entry(tmp_path, synthetic_coco):
    ann_file = synthetic_coco / "annotations" / "instances_val2017.json"
    recs = _records(_annotations(synthetic_coco))
    full = _write_log(tmp_path / "full.json", list(recs.items())).read_text()
    cut = full[:full.rfind("{")] + '{"seq_id": 7, "qsl'   # a run killed mid-write
    (tmp_path / "cut.json").write_text(cut)
    report = evaluate_accuracy_log(tmp_path / "cut.json", ann_file)
    assert report.images_evaluated == len(recs) - 1 and any("truncated" in n for n in report.notes)
