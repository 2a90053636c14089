"""Bad input to the accuracy check fails before the long work, in one clear line; no computed number is lost.

Unwritable output files, annotation files that are not COCO detection format,
annotations that leave nothing to score, accuracy logs that miss images, and
models whose class count does not fit the categories.
"""
from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest

import run
from backends.model_config import ModelConfig
from backends.null import NullBackend
from harness.accuracy.cli import main
from harness.accuracy.coco import AccuracyError
from harness.accuracy.evaluate import evaluate_accuracy_log, evaluate_records
from harness.run.dataset import Dataset, open_dataset
from harness.run.evaluate import evaluate_direct
from harness.settings.config import DataConfig
from ground.errors import OutputError
from qsl.memory_qsl import MemoryQSL
from tests.test_accuracy import _annotations, _records, _write_log

ROOT = Path(__file__).resolve().parent.parent
ANN = Path("annotations") / "instances_val2017.json"


@pytest.fixture
def blocker(tmp_path: Path) -> Path:
    """A regular file where a folder is expected."""
    path = tmp_path / "regfile"
    path.write_text("")
    return path


def _full_log(tmp_path: Path, coco: Path, first: int | None = None) -> Path:
    recs = _records(_annotations(coco))
    items = [(i, r) for i, r in recs.items() if first is None or i < first]
    return _write_log(tmp_path / "mlperf_log_accuracy.json", items)


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _coco_copy(tmp_path: Path, coco: Path, edit) -> Path:
    """A data folder sharing ``coco``'s images, with its annotation document changed by ``edit(doc)``."""
    root = tmp_path / "data"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").symlink_to(coco / "val2017")
    doc = _annotations(coco)
    edit(doc)
    (root / ANN).write_text(json.dumps(doc))
    return root


def _null_dataset(coco: Path, num_classes: int) -> tuple[NullBackend, Dataset]:
    backend = NullBackend(ModelConfig(backbone="resnet18", num_classes=num_classes, image_size=(32, 32)))
    return backend, Dataset(qsl=MemoryQSL(8, sizes=backend.sizes), annotation_file=coco / ANN)


# Output files that cannot be written: caught before the evaluation, and never at the cost of the mAP.

@pytest.mark.parametrize("flag", ["--output-file", "--dump-detections"])
def test_cli_unwritable_output_fails_before_evaluating(capsys, tmp_path, synthetic_coco, blocker, flag):
    log = _full_log(tmp_path, synthetic_coco)
    target = blocker / "out.json"
    rc, out, err = _cli(capsys, "--mlperf-accuracy-file", str(log), "--coco-dir", str(synthetic_coco), flag, str(target))
    assert rc == 2 and out == ""          # nothing evaluated, nothing printed
    assert err == f"error: cannot write {flag} {target}: {blocker} is a file, not a folder; " \
                  "pass a path in a writable folder\n"


def test_evaluate_direct_checks_dump_path_before_predicting(synthetic_coco, blocker):
    backend, dataset = _null_dataset(synthetic_coco, 7)
    with pytest.raises(OutputError, match=f"--dump-detections {blocker}/d.json: {blocker} is a file"):
        evaluate_direct(backend, dataset, dump_detections=blocker / "d.json", progress=False)
    assert backend.calls == 0


def test_run_evaluate_with_unwritable_dump_exits_2(capsys, tmp_path, synthetic_coco, blocker):
    rc = run.main(["evaluate", "--backend", "null", "--data", str(synthetic_coco), "--cache-dir", str(tmp_path / "c"),
                   "--backbone", "resnet18", "--image-size", "64", "64", "--num-classes", "7", "--threads", "1",
                   "--dump-detections", str(blocker / "d.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: cannot write --dump-detections {blocker}/d.json")


def test_late_detections_write_failure_keeps_the_map(synthetic_coco, blocker):
    recs = _records(_annotations(synthetic_coco))
    good = evaluate_records(recs, synthetic_coco / ANN)
    with pytest.raises(OutputError) as info:   # the folder vanished between the early check and the write
        evaluate_records(recs, synthetic_coco / ANN, dump_detections=blocker / "d.json")
    assert f"{blocker}/d.json" in str(info.value) and str(info.value).endswith(f"finished: mAP={100 * good.map:.3f}%")
    assert info.value.report.stats == good.stats


# Annotation files: the COCO structure is checked when the data set is opened and by the accuracy script.

@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_annotation_file_without_a_key(capsys, tmp_path, synthetic_coco, key):
    data = _coco_copy(tmp_path, synthetic_coco, lambda doc: doc.pop(key))
    log = _full_log(tmp_path, synthetic_coco)
    message = f"annotation file {data / ANN} has no '{key}' key"
    with pytest.raises(AccuracyError, match=message):
        evaluate_accuracy_log(log, data / ANN)
    rc, out, err = _cli(capsys, "--mlperf-accuracy-file", str(log), "--coco-dir", str(data))
    assert rc == 2 and out == "" and err.startswith(f"error: {message}") and len(err.splitlines()) == 1


def test_open_dataset_checks_annotations_before_preparing(tmp_path, synthetic_coco):
    data = _coco_copy(tmp_path, synthetic_coco, lambda doc: doc.pop("annotations"))
    with pytest.raises(AccuracyError, match=f"{data / ANN} has no 'annotations' key"):
        open_dataset(DataConfig(data_dir=str(data), cache_dir=str(tmp_path / "cache")), [32], progress=False)
    assert not (tmp_path / "cache").exists()   # failed before any image was decoded


@pytest.mark.parametrize("edit, message", [
    (lambda doc: doc["annotations"][0].pop("area"), "annotations[0] lacks area (every entry of 'annotations' needs"),
    (lambda doc: doc.__setitem__("images", {"0": doc["images"][0]}), "'images' is a dict, expected a list"),
    (lambda doc: doc["categories"].append("person"), "categories[6] lacks id"),
])
def test_annotation_entries_are_checked(tmp_path, synthetic_coco, edit, message):
    data = _coco_copy(tmp_path, synthetic_coco, edit)
    with pytest.raises(AccuracyError, match=re.escape(message)):
        evaluate_accuracy_log(_full_log(tmp_path, synthetic_coco), data / ANN)


def test_empty_annotations_give_no_number(capsys, tmp_path, synthetic_coco):
    from harness.accuracy.coco import MapNotComputed
    data = _coco_copy(tmp_path, synthetic_coco, lambda doc: doc.__setitem__("annotations", []))
    log = _full_log(tmp_path, synthetic_coco)
    with pytest.raises(MapNotComputed, match="has an empty 'annotations' list: there is nothing to score") as info:
        evaluate_accuracy_log(log, data / ANN)
    assert info.value.report.images_evaluated == 8 and info.value.report.map == -1
    out_file = tmp_path / "accuracy.txt"
    rc, out, err = _cli(capsys, "--mlperf-accuracy-file", str(log), "--coco-dir", str(data), "--output-file", str(out_file))
    assert rc == 1 and "-100" not in out and "mAP=" not in out
    assert out.splitlines()[0].startswith("mAP not computed: the annotation file") and "nothing to score" in err
    assert out_file.read_text() == out       # the report is kept


def test_images_without_objects_give_no_number(tmp_path, synthetic_coco):
    ann = _annotations(synthetic_coco)
    empty = [i for i, im in enumerate(ann["images"]) if not any(a["image_id"] == im["id"] for a in ann["annotations"])]
    assert empty                                                   # the synthetic set has an image with no objects
    log = _write_log(tmp_path / "l.json", [(empty[0], np.float32([[empty[0], 0.1, 0.1, 0.3, 0.3, 0.9, 1]]))])
    with pytest.raises(AccuracyError, match="none of the 1 evaluated images has an object"):
        evaluate_accuracy_log(log, synthetic_coco / ANN, expected=[empty[0]])


# Logs that miss images: the mAP is printed, marked INCOMPLETE, and the exit status is 1.

def test_partial_log_is_marked_incomplete_and_fails(capsys, tmp_path, synthetic_coco):
    log = _full_log(tmp_path, synthetic_coco, first=5)
    subset = evaluate_accuracy_log(log, synthetic_coco / ANN, expected=range(5))
    assert subset.incomplete is None
    out_file = tmp_path / "accuracy.txt"
    args = ["--mlperf-accuracy-file", str(log), "--coco-dir", str(synthetic_coco), "--output-file", str(out_file)]
    rc, out, err = _cli(capsys, *args)
    head = f"mAP={100 * subset.map:.3f}% over 5 of 8 images: INCOMPLETE, 3 images are missing from the log"
    assert rc == 1 and out.splitlines()[0] == head and out_file.read_text().splitlines()[0] == head
    assert "covers 5 of 8 images" in err and "--allow-missing" in err
    rc, out, _ = _cli(capsys, *args, "--allow-missing")    # a subset evaluated on purpose
    assert rc == 0 and out.splitlines()[0] == head
    rc, out, _ = _cli(capsys, *args, "--max-images", "5")  # the run covered only the first 5: complete
    assert rc == 0 and out.splitlines()[0] == f"mAP={100 * subset.map:.3f}%"


def test_truncated_log_fails(capsys, tmp_path, synthetic_coco):
    full = _full_log(tmp_path, synthetic_coco).read_text()
    cut = tmp_path / "cut.json"
    cut.write_text(full[:full.find("}, {", full.find("}, {") + 1) + 1])   # two complete entries, then the end
    rc, out, _ = _cli(capsys, "--mlperf-accuracy-file", str(cut), "--coco-dir", str(synthetic_coco))
    assert rc == 1 and "over 2 of 8 images: INCOMPLETE, 6 images are missing" in out.splitlines()[0]
    assert "truncated" in out


# The label contract: num_classes - 1 == number of categories, checked before any prediction.

def _coco_like_categories(tmp_path: Path) -> Path:
    """An annotation file with COCO's 80 category ids (1..90 with 10 gaps)."""
    ids = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
    path = tmp_path / "coco80.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": i, "name": f"c{i}"} for i in ids]}))
    return path


def test_num_classes_must_fit_the_categories(tmp_path, synthetic_coco):
    from harness.run.dataset import NumClassesError, check_num_classes
    six = Dataset(qsl=MemoryQSL(1), annotation_file=synthetic_coco / ANN)
    check_num_classes(7, six)
    with pytest.raises(NumClassesError, match=r"num_classes=81 \(labels 1..80, 0 = background\) but annotation "
                                              r"file .* has 6 categories.*num_classes=7"):
        check_num_classes(81, six)
    coco = Dataset(qsl=MemoryQSL(1), annotation_file=_coco_like_categories(tmp_path))
    check_num_classes(81, coco)
    for wrong in (80, 91):
        with pytest.raises(NumClassesError, match="has 80 categories"):
            check_num_classes(wrong, coco)
    demo = tomllib.loads((ROOT / "configs" / "demo.toml").read_text())["model"]["num_classes"]
    check_num_classes(demo, six)        # the demo's data comes from the same generator as synthetic_coco
    check_num_classes(81, Dataset(qsl=MemoryQSL(1)))   # no annotation file: nothing is scored


def test_evaluate_direct_checks_num_classes_before_predicting(synthetic_coco):
    backend, dataset = _null_dataset(synthetic_coco, 81)
    with pytest.raises(AccuracyError, match="num_classes=81 .* 6 categories"):
        evaluate_direct(backend, dataset, progress=False)
    assert backend.calls == 0


def test_open_dataset_counts_categories(tmp_path, synthetic_coco):
    data = tmp_path / "coco"
    shutil.copytree(synthetic_coco, data, ignore=shutil.ignore_patterns("ssd_cache*"))
    dataset = open_dataset(DataConfig(data_dir=str(data)), [32], progress=False)
    assert dataset.num_categories == 6 and dataset.annotation_file == data / ANN


def test_an_accuracy_run_without_an_map_still_writes_accuracy_txt(tmp_path, synthetic_coco, fast_conf, monkeypatch):
    from harness.run.benchmark import run_benchmark
    from harness.settings.config import load_config
    monkeypatch.chdir(tmp_path)
    data = _coco_copy(tmp_path, synthetic_coco, lambda doc: doc.__setitem__("annotations", []))
    backend, dataset = _null_dataset(data, 7)
    cfg = load_config(None, {"model": {"num_classes": 7}, "run": {
        "scenario": "Offline", "mode": "accuracy", "user_conf": str(fast_conf), "output_dir": str(tmp_path / "o"),
        "offline_expected_qps": 1000.0}})
    result = run_benchmark(cfg, backend, dataset)
    assert result.exit_code == 1 and "nothing to score" in result.runs[0].accuracy_error
    text = (tmp_path / "o/default/ssd-resnet34/Offline/accuracy/accuracy.txt").read_text()
    assert text.startswith("mAP not computed: the annotation file") and "-100" not in text


def _repeat_image(doc: dict) -> None:
    doc["images"].insert(5, dict(doc["images"][2]))     # one image listed twice: it would be scored twice


def _repeat_annotation_id(doc: dict) -> None:
    doc["annotations"][4]["id"] = doc["annotations"][1]["id"]   # COCO's index keeps only one of them


@pytest.mark.parametrize("edit, what", [(_repeat_image, "image id"), (_repeat_annotation_id, "annotation id")])
def test_duplicate_entries_are_refused_with_their_ids(capsys, tmp_path, synthetic_coco, edit, what):
    data = _coco_copy(tmp_path, synthetic_coco, edit)
    doc = json.loads((data / ANN).read_text())
    key = "images" if what == "image id" else "annotations"
    repeated = doc["images"][2]["id"] if key == "images" else doc["annotations"][1]["id"]
    first, second = [n for n, item in enumerate(doc[key]) if item["id"] == repeated]
    message = (f"annotation file {data / ANN} lists {what} {repeated} more than once ({key}[{first}] and "
               f"{key}[{second}])")
    log = _full_log(tmp_path, synthetic_coco)
    with pytest.raises(AccuracyError, match=re.escape(message)):
        evaluate_accuracy_log(log, data / ANN)
    rc, out, err = _cli(capsys, "--mlperf-accuracy-file", str(log), "--coco-dir", str(data))
    assert rc == 2 and out == "" and err.startswith(f"error: {message}") and len(err.splitlines()) == 1
    with pytest.raises(AccuracyError, match=re.escape(message)):   # before the cache is made
        open_dataset(DataConfig(data_dir=str(data), cache_dir=str(tmp_path / "cache")), (64,), progress=False)
    assert not (tmp_path / "cache").exists()
