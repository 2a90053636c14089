"""Two-scale method: masks, area filter, one pass for equal sizes, one NMS over both scales, geometry checks.

That an image's detections do not depend on its batch is tested through the backend (tests/test_backend.py)
and byte for byte through LoadGen (tests/test_determinism.py)."""
import dataclasses
import math
from pathlib import Path

import pytest
import torch

from backends.model_config import ModelConfig
from backends.ssd.boxes import cxcywh_to_xyxy
from backends.ssd.default_boxes import GeometryError, boxes_per_map, default_boxes
from backends.ssd.model import SSDResNet
from backends.ssd.two_scale import FILTER_AREA_PX, TwoScaleDetector
from harness.settings.config import load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))
SPEC_BOXES = {300: 8732, 600: 34330, 700: 46742, 1400: 186380, 1200: 15130}
SMALL, LARGE = (0, 1, 1, 1, 1, 1), (1, 1, 1, 1, 0, 0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SSDResNet(num_classes=3, backbone="resnet18").eval()


def fake_outputs(detector, n=1):
    """Zero offsets (boxes = default boxes) and class 1 certain for every box, per pass."""
    outs = []
    for p in detector.passes:
        b = p.dboxes.shape[0]
        confs = torch.zeros(n, 3, b)
        confs[:, 1] = 20.0
        outs.append((torch.zeros(n, 4, b), confs))
    return outs


def xyxy(size, mask):
    return cxcywh_to_xyxy(default_boxes(size, 1.0, mask=mask)).clamp(0, 1)


def test_masks_drop_exactly_the_masked_maps(model):
    cfg = ModelConfig(num_classes=3, backbone="resnet18", image_size=(257, 320), small_mask=SMALL, large_mask=LARGE)
    det = TwoScaleDetector(model, cfg)
    boxes, scores = det.merge(fake_outputs(det), torch.tensor([[480, 640]]))
    n0 = sum(n for n, m in zip(boxes_per_map(257), SMALL) if m)
    n1 = sum(n for n, m in zip(boxes_per_map(320), LARGE) if m)
    assert boxes.shape == (1, n0 + n1, 4) and scores.shape == (1, 3, n0 + n1)
    torch.testing.assert_close(boxes[0], torch.cat([xyxy(257, SMALL), xyxy(320, LARGE)]))
    assert torch.all(scores[0, 1] > 0.99)                 # nothing filtered without use_filter


def test_filter_keeps_exactly_the_right_areas(model):
    cfg = ModelConfig(num_classes=3, backbone="resnet18", image_size=(257, 320), use_filter=True)
    det = TwoScaleDetector(model, cfg)
    h, w = 480, 640
    boxes, scores = det.merge(fake_outputs(det), torch.tensor([[h, w]]))
    b0 = xyxy(257, None)
    b1 = xyxy(320, None)
    area0 = (b0[:, 2] - b0[:, 0]) * w * (b0[:, 3] - b0[:, 1]) * h
    area1 = (b1[:, 2] - b1[:, 0]) * w * (b1[:, 3] - b1[:, 1]) * h
    expected = torch.cat([area0 > 96 * 96, area1 < 96 * 96])
    assert 0 < expected[:b0.shape[0]].sum() < b0.shape[0] and 0 < expected[b0.shape[0]:].sum() < b1.shape[0]
    assert torch.equal(scores[0, 1] > 0, expected)
    assert torch.all(scores[0, :, ~expected] == 0)


def test_filter_uses_each_image_own_size(model):
    cfg = ModelConfig(num_classes=3, backbone="resnet18", image_size=(257, 320), use_filter=True)
    det = TwoScaleDetector(model, cfg)
    _, scores = det.merge(fake_outputs(det, 2), torch.tensor([[90, 90], [2000, 2000]]))
    n0 = det.passes[0].dboxes.shape[0]
    assert scores[0, 1, :n0].sum() == 0                   # in a 90x90 image every box is below 96^2 px
    assert torch.all(scores[0, 1, n0:] > 0)
    assert 0 < scores[1, 1, :n0].count_nonzero() and scores[1, 1, n0:].count_nonzero() < scores.shape[2] - n0


def test_equal_sizes_run_once_with_the_union_rule(model):
    cfg = ModelConfig(num_classes=3, backbone="resnet18", image_size=(257, 257), use_filter=True,
                      small_mask=SMALL, large_mask=LARGE)
    det = TwoScaleDetector(model, cfg)
    assert det.sizes == (257,) and det.passes[0].mask == (1, 1, 1, 1, 1, 1)
    h, w = 300, 400
    _, scores = det.merge(fake_outputs(det), torch.tensor([[h, w]]))
    b = xyxy(257, None)
    area = (b[:, 2] - b[:, 0]) * w * (b[:, 3] - b[:, 1]) * h
    in_small = torch.cat([torch.full((n,), bool(m)) for n, m in zip(boxes_per_map(257), SMALL)])
    in_large = torch.cat([torch.full((n,), bool(m)) for n, m in zip(boxes_per_map(257), LARGE)])
    expected = (in_small & (area > FILTER_AREA_PX)) | (in_large & (area < FILTER_AREA_PX))
    assert torch.equal(scores[0, 1] > 0, expected)
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        det.detect({257: torch.zeros(1, 3, 257, 257)}, torch.tensor([[h, w]]))
    finally:
        handle.remove()
    assert len(calls) == 1


def test_one_nms_over_both_scales_worked_by_hand(model):
    """The last map (1x1, scales 261 and 315 px) at S0 = 257 and S1 = 320, with hand-set logits.

    S0 box 0 (261/257 > 1, clamped to the whole image) and S1 box 0 (261/320 wide, centred) overlap with
    IoU (261/320)^2 = 0.665 > 0.5, both class 1: one class-wise NMS over the union keeps only the higher
    score, where NMS per pass would keep both. S1 box 1 (sqrt(261 * 315)/320 wide) is class 2 and stays.
    Every other box is background with certainty.
    """
    cfg = ModelConfig(num_classes=3, backbone="resnet18", image_size=(257, 320))
    det = TwoScaleDetector(model, cfg)
    chosen = {257: {0: (1, 5.0)}, 320: {0: (1, 4.0), 1: (2, 3.0)}}    # last-map box -> (class, logit)

    def fake_model(x, mask):
        b = det.passes[[p.size for p in det.passes].index(x.shape[-1])].dboxes.shape[0]
        confs = torch.zeros(1, 3, b)
        confs[:, 0] = 10.0
        for box, (label, logit) in chosen[x.shape[-1]].items():
            confs[0, 0, b - 4 + box] = 0.0
            confs[0, label, b - 4 + box] = logit
        return torch.zeros(1, 4, b), confs

    det.model = fake_model
    (got,) = det.detect({257: torch.zeros(1, 3, 257, 257), 320: torch.zeros(1, 3, 320, 320)},
                        torch.tensor([[480, 640]]))
    e = torch.exp(torch.tensor([5.0, 3.0]))
    half = math.sqrt(261 * 315) / 320 / 2
    want = torch.tensor([[0.0, 0.0, 1.0, 1.0, e[0] / (e[0] + 2), 1.0],
                         [0.5 - half, 0.5 - half, 0.5 + half, 0.5 + half, e[1] / (e[1] + 2), 2.0]])
    torch.testing.assert_close(got, want)


def test_steps_that_do_not_fit_fail_at_construction(model):
    cfg = ModelConfig(num_classes=3, backbone="resnet18", image_size=(300, 600), dboxes_steps=(8, 16, 32, 64, 100, 300))
    with pytest.raises(GeometryError, match="600"):
        TwoScaleDetector(model, cfg)


def test_model_of_another_variant_fails_the_count_check():
    model = SSDResNet(num_classes=3, backbone="resnet18", variant="ssd1200")
    cfg = ModelConfig(num_classes=3, backbone="resnet18", image_size=(1200, 1200))
    with pytest.raises(GeometryError, match="outputs 15130 boxes"):
        TwoScaleDetector(model, cfg)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_file_loads_and_its_geometry_is_valid(path):
    cfg = load_config(path).model
    for size in cfg.sizes:
        n = default_boxes(size, cfg.dboxes_scale, cfg.dboxes_steps, cfg.variant).shape[0]
        assert n == SPEC_BOXES.get(size, sum(boxes_per_map(size, cfg.variant)))
    small = dataclasses.replace(cfg, backbone="resnet18")   # same geometry, cheaper to build
    det = TwoScaleDetector(SSDResNet(small.num_classes, "resnet18", small.variant), small)
    assert det.sizes == cfg.sizes


def test_seed_configs_are_present():
    names = {p.name for p in CONFIGS}
    assert {"ssd300_mlperf_steps.toml", "ssd700_1400.toml", "ssd700_1400_filter.toml",
            "ssd700_1400_masks.toml", "ssd1200.toml"} <= names
