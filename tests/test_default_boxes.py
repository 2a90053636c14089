"""Default boxes against the SPEC table, the MLPerf reference vectors, and hand arithmetic."""
import json
import math
from pathlib import Path

import pytest
import torch

from backends.ssd.default_boxes import (
    GeometryError,
    boxes_per_map,
    default_boxes,
    fitting_steps,
    map_sizes,
)
from backends.ssd.model import min_image_size

# Values computed with the MLPerf training reference's own DefaultBoxes (see the file's "about").
VECTORS = Path(__file__).resolve().parent / "data" / "default_boxes.json"
SPEC_TABLE = {  # SPEC.md section 2: feature sizes and box counts
    300: ([38, 19, 10, 5, 3, 1], 8732),
    600: ([75, 38, 19, 10, 8, 6], 34330),
    700: ([88, 44, 22, 11, 9, 7], 46742),
    1400: ([175, 88, 44, 22, 20, 18], 186380),
}


@pytest.mark.parametrize("size", sorted(SPEC_TABLE))
def test_feature_sizes_and_counts_match_spec_table(size):
    sizes, total = SPEC_TABLE[size]
    assert map_sizes(size) == sizes
    per_map = [nd * f * f for nd, f in zip((4, 6, 6, 6, 4, 4), sizes)]
    assert boxes_per_map(size) == per_map and sum(per_map) == total
    assert default_boxes(size).shape == (total, 4)


def test_ssd1200_variant_geometry():
    assert map_sizes(1200, "ssd1200") == [50, 25, 13, 7, 3, 3]
    boxes = default_boxes(1200, 4.0, [24, 48, 92, 171, 400, 400], "ssd1200")
    assert boxes.shape == (4 * 2500 + 6 * 625 + 6 * 169 + 6 * 49 + 4 * 9 + 4 * 9, 4) == (15130, 4)


# Read at collection: a missing or unreadable vectors file is an error, never a skip.
CASES = json.loads(VECTORS.read_text())["cases"]
# SPEC.md section 2: 300 with and without the MLPerf steps, 600, 700 and 1400 at scale 2.
EXPECTED_CASES = [(300, 1.0, None), (300, 1.0, [8, 16, 32, 64, 100, 300]), (600, 1.0, None), (700, 2.0, None),
                  (1400, 2.0, None)]


def test_the_vectors_file_holds_every_reference_case():
    got = [(c["image_size"], float(c["dboxes_scale"]), c["steps"]) for c in CASES]
    assert sorted(map(repr, got)) == sorted(map(repr, EXPECTED_CASES))


@pytest.mark.parametrize("c", CASES, ids=lambda c: f"{c['image_size']}-scale{c['dboxes_scale']}-steps{c['steps']}")
def test_against_reference_vectors(c):
    boxes = default_boxes(c["image_size"], c["dboxes_scale"], c["steps"]).double()
    assert map_sizes(c["image_size"]) == c["feature_sizes"]
    assert boxes_per_map(c["image_size"]) == c["boxes_per_map"] and boxes.shape[0] == c["total"]
    torch.testing.assert_close(boxes.sum(0), torch.tensor(c["column_sums_cx_cy_w_h"], dtype=torch.float64),
                               rtol=1e-6, atol=1e-3)
    starts = [0] + list(torch.tensor(c["boxes_per_map"]).cumsum(0)[:-1].tolist())
    expected_first = torch.tensor(c["first_box_of_each_map"], dtype=torch.float64)
    torch.testing.assert_close(boxes[starts], expected_first, rtol=0, atol=1e-6)
    torch.testing.assert_close(boxes[1000], torch.tensor(c["box_index_1000"], dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(boxes[-1], torch.tensor(c["last_box"], dtype=torch.float64), rtol=0, atol=1e-6)


def test_one_by_one_map_by_hand():
    # At 300 the last map is 1x1: one cell centred at 0.5, scales 261/300 and 315/300, aspect ratio 2.
    sk1, sk2 = 261 / 300, 315 / 300
    expected = torch.tensor([
        [0.5, 0.5, sk1, sk1],
        [0.5, 0.5, math.sqrt(sk1 * sk2), math.sqrt(sk1 * sk2)],
        [0.5, 0.5, min(1.0, sk1 * math.sqrt(2)), sk1 / math.sqrt(2)],   # 1.23 clamps to 1
        [0.5, 0.5, sk1 / math.sqrt(2), min(1.0, sk1 * math.sqrt(2))],
    ])
    torch.testing.assert_close(default_boxes(300)[-4:], expected)
    only_last = default_boxes(300, mask=[0, 0, 0, 0, 0, 1])
    torch.testing.assert_close(only_last, expected)


def test_first_map_cell_by_hand():
    # 700 at scale 2: first map 88x88, scales 42/700 and 90/700, first cell centre 0.5/88.
    boxes = default_boxes(700, 2.0)
    s1, s2 = 42 / 700, 90 / 700
    c = 0.5 / 88
    assert boxes[0].tolist() == pytest.approx([c, c, s1, s1], abs=1e-7)
    cells = 88 * 88
    assert boxes[cells].tolist() == pytest.approx([c, c, math.sqrt(s1 * s2), math.sqrt(s1 * s2)], abs=1e-7)
    assert boxes[2 * cells].tolist() == pytest.approx([c, c, s1 * math.sqrt(2), s1 / math.sqrt(2)], abs=1e-7)
    assert boxes[1].tolist() == pytest.approx([1.5 / 88, c, s1, s1], abs=1e-7)  # next column
    assert boxes[88].tolist() == pytest.approx([c, 1.5 / 88, s1, s1], abs=1e-7)  # next row


@pytest.mark.parametrize("mask", [(0, 1, 1, 1, 1, 1), (1, 1, 1, 1, 0, 0), (1, 0, 1, 0, 1, 0)])
def test_masks_keep_exactly_the_selected_maps(mask):
    full = default_boxes(700, 2.0)
    per_map = boxes_per_map(700)
    pieces = torch.split(full, per_map)
    expected = torch.cat([p for p, m in zip(pieces, mask) if m])
    assert torch.equal(default_boxes(700, 2.0, mask=mask), expected)


def test_too_small_input_is_rejected_with_the_minimum():
    assert min_image_size() == 257
    assert map_sizes(257)[-1] == 1
    with pytest.raises(GeometryError, match="at least 257"):
        default_boxes(256)


def test_steps_that_do_not_fit_are_a_clear_error_whose_advice_works():
    with pytest.raises(GeometryError, match="do not fit image size 600") as e:
        default_boxes(600, 1.0, [8, 16, 32, 64, 100, 300])
    advice = str(e.value).split("drop --dboxes-steps or give ")[1]
    steps = [int(x) for x in advice.split()]                 # whole pixels, as the flag takes them
    assert steps == fitting_steps(600)
    assert default_boxes(600, 1.0, steps).shape == default_boxes(600).shape


def test_one_list_of_steps_for_two_sizes_says_to_drop_the_flag():
    from backends.model_config import ModelConfig
    from backends.ssd.two_scale import build_passes
    cfg = ModelConfig(image_size=(300, 600), dboxes_steps=(8, 16, 32, 64, 100, 300))
    with pytest.raises(GeometryError, match="no list fits both 300 and 600: drop --dboxes-steps"):
        build_passes(cfg)
    assert len(build_passes(ModelConfig(image_size=(300, 300), dboxes_steps=(8, 16, 32, 64, 100, 300)))) == 1


# The MLPerf inference SSD-ResNet34 1200 (mlcommons/inference, vision/classification_and_detection/python/
# models/ssd_r34.py, DefaultBoxes and dboxes_R34_coco): steps are int(1200 / f) = 24, 48, 92, 171, 400, 400
# for the feature sizes f = 50, 25, 13, 7, 3, 3; a map has fk = 1200 // step cells per side (50, 25, 13, 7,
# 3, 3: the feature sizes again, not 1200 / 92 = 13.04 or 1200 / 171 = 7.02); box scales int(s * 1200 / 300)
# = 84, 180, 396, 612, 828, 1044, 1260 pixels; centre of row i, column j ((j + 0.5) / fk, (i + 0.5) / fk).
SSD1200_MAP_START = {2: 4 * 50 * 50 + 6 * 25 * 25, 3: 4 * 50 * 50 + 6 * 25 * 25 + 6 * 13 * 13}   # 13750, 14764
SSD1200_BY_HAND = {   # box index -> (cx, cy, w, h)
    0: (0.5 / 50, 0.5 / 50, 84 / 1200, 84 / 1200),                                 # map 0, row 0, column 0
    SSD1200_MAP_START[2] + 12: (12.5 / 13, 0.5 / 13, 396 / 1200, 396 / 1200),       # map 2, row 0, column 12
    SSD1200_MAP_START[2] + 168: (12.5 / 13, 12.5 / 13, 396 / 1200, 396 / 1200),     # map 2, last cell
    SSD1200_MAP_START[2] + 169 + 13: (0.5 / 13, 1.5 / 13, math.sqrt(396 * 612) / 1200,
                                      math.sqrt(396 * 612) / 1200),                 # map 2, 2nd shape, row 1
    SSD1200_MAP_START[3] + 48: (6.5 / 7, 6.5 / 7, 612 / 1200, 612 / 1200),          # map 3, last cell
    SSD1200_MAP_START[3] + 2 * 49 + 6: (6.5 / 7, 0.5 / 7, 612 * math.sqrt(2) / 1200,
                                        612 / math.sqrt(2) / 1200),                 # map 3, aspect 2
    15130 - 1: (2.5 / 3, 2.5 / 3, 1044 / math.sqrt(2) / 1200, min(1.0, 1044 * math.sqrt(2) / 1200)),  # clamped
}


def _ssd1200_boxes(model) -> torch.Tensor:
    from backends.ssd.two_scale import build_passes
    (only,) = build_passes(model)
    return only.dboxes.double()


def test_ssd1200_config_gives_the_inference_references_boxes():
    from harness.settings.config import load_config
    model = load_config(Path(__file__).resolve().parents[1] / "configs" / "ssd1200.toml").model
    boxes = _ssd1200_boxes(model)
    assert boxes.shape == (15130, 4)
    for index, expected in SSD1200_BY_HAND.items():
        assert boxes[index].tolist() == pytest.approx(expected, abs=1e-6), index


def test_ssd1200_steps_given_as_the_reference_writes_them_place_the_same_boxes():
    """The seed-style flags --dboxes-steps 24 48 92 171 400 400 mean the reference's cells, 1200 // step."""
    from backends.model_config import ModelConfig
    model = ModelConfig(variant="ssd1200", image_size=(1200, 1200), dboxes_scale=4.0,
                        dboxes_steps=(24, 48, 92, 171, 400, 400))
    boxes = _ssd1200_boxes(model)
    for index, expected in SSD1200_BY_HAND.items():
        assert boxes[index].tolist() == pytest.approx(expected, abs=1e-6), index
    assert torch.equal(boxes, _ssd1200_boxes(ModelConfig(variant="ssd1200", image_size=(1200, 1200),
                                                          dboxes_scale=4.0)))
