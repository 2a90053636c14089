"""The synthetic COCO-layout generator: layout validity, determinism, content mix."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qsl.synthetic.dataset import SyntheticError, main, make_synthetic_coco

NUM = 24


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    make_synthetic_coco(out, NUM, seed=0, split="val2017")
    return out


def _load(root: Path, split: str = "val2017") -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def test_layout_loads_in_pycocotools(synth):
    from pycocotools.coco import COCO
    coco = COCO(str(synth / "annotations" / "instances_val2017.json"))
    assert sorted(coco.getCatIds()) == [1, 3, 13, 37, 44, 74]
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert names == {1: "person", 3: "car", 13: "stop sign", 37: "sports ball", 44: "bottle", 74: "clock"}
    assert len(coco.getImgIds()) == NUM
    doc = _load(synth)
    assert set(doc) >= {"info", "licenses", "images", "annotations", "categories"}
    ids = [im["id"] for im in doc["images"]]
    assert len(set(ids)) == NUM and ids != list(range(NUM))  # ids are not the list positions
    for im in doc["images"]:
        with Image.open(synth / "val2017" / im["file_name"]) as img:
            assert img.format == "JPEG"
            assert (img.width, img.height) == (im["width"], im["height"])
            assert 320 <= img.width <= 640 and 320 <= img.height <= 640
    ann_ids = [a["id"] for a in doc["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)


def test_boxes_are_tight_and_inside(synth):
    doc = _load(synth)
    sizes = {im["id"]: (im["width"], im["height"]) for im in doc["images"]}
    for ann in doc["annotations"]:
        x, y, w, h = ann["bbox"]
        width, height = sizes[ann["image_id"]]
        assert ann["iscrowd"] == 0 and w > 0 and h > 0
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height
        xs = [v for poly in ann["segmentation"] for v in poly[0::2]]
        ys = [v for poly in ann["segmentation"] for v in poly[1::2]]
        # The box is the filled silhouette's pixel extent: within a pixel of its polygons' extent.
        assert abs(min(xs) - x) <= 1.0 and abs(max(xs) - (x + w)) <= 1.0
        assert abs(min(ys) - y) <= 1.0 and abs(max(ys) - (y + h)) <= 1.0
        assert 0 < ann["area"] <= w * h
        assert min(w, h) >= 10


def test_content_mix(synth):
    doc = _load(synth)
    areas = np.array([a["area"] for a in doc["annotations"]])
    assert (areas < 32 ** 2).any() and ((areas >= 32 ** 2) & (areas <= 96 ** 2)).any() and (areas > 96 ** 2).any()
    assert {a["category_id"] for a in doc["annotations"]} == {1, 3, 13, 37, 44, 74}
    annotated = {a["image_id"] for a in doc["annotations"]}
    assert any(im["id"] not in annotated for im in doc["images"])
    modes = [Image.open(synth / "val2017" / im["file_name"]).mode for im in doc["images"]]
    assert "L" in modes and "RGB" in modes
    # Some pairs of objects in the same image overlap.
    overlaps = 0
    by_image: dict[int, list] = {}
    for a in doc["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
    for boxes in by_image.values():
        for i, (x0, y0, w0, h0) in enumerate(boxes):
            for x1, y1, w1, h1 in boxes[i + 1:]:
                overlaps += min(x0 + w0, x1 + w1) > max(x0, x1) and min(y0 + h0, y1 + h1) > max(y0, y1)
    assert overlaps > 0


def test_deterministic_and_prefix_stable(synth, tmp_path):
    make_synthetic_coco(tmp_path / "again", NUM, seed=0)
    make_synthetic_coco(tmp_path / "short", 5, seed=0)
    make_synthetic_coco(tmp_path / "other", 5, seed=1)
    full = _load(synth)
    assert _load(tmp_path / "again") == full
    short = _load(tmp_path / "short")
    assert short["images"] == full["images"][:5]
    first = full["images"][0]["file_name"]
    same = (synth / "val2017" / first).read_bytes()
    assert (tmp_path / "again" / "val2017" / first).read_bytes() == same
    assert (tmp_path / "short" / "val2017" / first).read_bytes() == same
    assert (tmp_path / "other" / "val2017" / first).read_bytes() != same


def test_cli_and_bad_arguments(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--num-images", "2", "--split", "train2017"]) == 0
    assert len(_load(tmp_path, "train2017")["images"]) == 2
    assert len(list((tmp_path / "train2017").glob("*.jpg"))) == 2
    assert main(["--out", str(tmp_path), "--num-images", "0"]) == 2
    assert "num_images" in capsys.readouterr().err
    with pytest.raises(SyntheticError, match="min_size"):
        make_synthetic_coco(tmp_path, 1, min_size=500, max_size=400)
