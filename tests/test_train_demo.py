"""Demo training: matching, encoding, hard negatives, loss, schedule, augmentation, checkpoint, evaluation."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from backends.ssd.boxes import cxcywh_to_xyxy, decode_boxes
from tools import train_demo
from tools.demo_data import DemoDataError, augment, load_coco_set
from tools.eval_demo import coco_map, postprocess
from tools.ssd_targets import (
    encode,
    hard_negative_mask,
    match,
    multibox_loss,
    xyxy_to_cxcywh,
)

# Three default boxes (cx, cy, w, h): top-left quarter, bottom-right quarter, a small central box.
DBOXES = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5], [0.5, 0.5, 0.2, 0.2]])


def make_coco(root: Path, split: str = "train2017", n: int = 3) -> Path:
    """A tiny COCO-format set: coloured rectangles on grey, categories listed out of id order."""
    (root / "annotations").mkdir(parents=True)
    (root / split).mkdir()
    images, anns = [], []
    for i in range(n):
        w, h = 320 + 10 * i, 300
        img = Image.new("RGB", (w, h), (90, 90, 90))
        draw = ImageDraw.Draw(img)
        for k, (cat, colour) in enumerate([(3, (240, 30, 30)), (1, (30, 30, 240))]):
            x, y, bw, bh = 20 + 150 * k, 40 + 20 * i, 100, 120
            draw.rectangle([x, y, x + bw - 1, y + bh - 1], fill=colour)
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "category_id": cat, "bbox": [x, y, bw, bh],
                         "area": bw * bh, "iscrowd": 0})
        img.save(root / split / f"{i}.jpg", quality=95)
        images.append({"id": 10 + i, "file_name": f"{i}.jpg", "width": w, "height": h})
    cats = [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}]
    ann_file = root / "annotations" / f"instances_{split}.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann_file


def test_box_format_round_trip():
    xyxy = torch.tensor([[0.1, 0.2, 0.5, 0.6]])
    assert torch.allclose(xyxy_to_cxcywh(xyxy), torch.tensor([[0.3, 0.4, 0.4, 0.4]]))
    assert torch.allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(xyxy)), xyxy)


def test_match_threshold_and_forced_match():
    gt = torch.tensor([[0.0, 0.0, 0.4, 0.5],      # IoU with box 0 = 0.2 / 0.25 = 0.8
                       [0.45, 0.45, 0.55, 0.55]])  # best IoU (box 2) = 0.01 / 0.04 = 0.25: forced
    boxes, labels = match(gt, torch.tensor([4, 6]), DBOXES)
    assert labels.tolist() == [4, 0, 6]
    assert torch.allclose(boxes[0], gt[0]) and torch.allclose(boxes[2], gt[1])
    assert torch.allclose(boxes[1], torch.tensor([0.5, 0.5, 1.0, 1.0]))  # background keeps its default box


def test_match_iou_exactly_half_is_positive():
    # gt 0 = [0, 0, 0.5, 0.25] is copied exactly by box 3 (forced match) and covers half of box 0:
    # IoU(box 0) = 0.125 / 0.25 = 0.5. gt 1 equals box 2.
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.25], [0.4, 0.4, 0.6, 0.6]])
    three = torch.cat([DBOXES, torch.tensor([[0.25, 0.125, 0.5, 0.25]])])  # exact copy of gt 0 as box 3
    _, labels = match(gt, torch.tensor([1, 2]), three, iou_threshold=0.5)
    assert labels.tolist() == [1, 0, 2, 1]   # box 3 is forced, box 0 passes at IoU exactly 0.5
    _, labels = match(gt, torch.tensor([1, 2]), three, iou_threshold=0.51)
    assert labels.tolist() == [0, 0, 2, 1]


def test_match_without_ground_truth_is_all_background():
    boxes, labels = match(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), DBOXES)
    assert labels.tolist() == [0, 0, 0]
    assert torch.allclose(boxes, cxcywh_to_xyxy(DBOXES))


def test_encode_golden_values():
    g = torch.tensor([[0.1, 0.2, 0.5, 0.6]])            # cxcywh (0.3, 0.4, 0.4, 0.4)
    d = torch.tensor([[0.25, 0.5, 0.2, 0.8]])
    expected = [(0.3 - 0.25) / (0.1 * 0.2), (0.4 - 0.5) / (0.1 * 0.8), math.log(0.4 / 0.2) / 0.2,
                math.log(0.4 / 0.8) / 0.2]
    assert torch.allclose(encode(g, d), torch.tensor([expected]), atol=1e-5)


def test_encode_decode_round_trip():
    gen = torch.Generator().manual_seed(0)
    dboxes = torch.cat([torch.rand(50, 2, generator=gen), 0.05 + 0.5 * torch.rand(50, 2, generator=gen)], 1)
    x1y1 = torch.rand(2, 50, 2, generator=gen) * 0.5
    boxes = torch.cat([x1y1, x1y1 + 0.01 + 0.4 * torch.rand(2, 50, 2, generator=gen)], -1)
    locs = encode(boxes, dboxes).transpose(1, 2)          # model layout [N, 4, B]
    assert torch.allclose(decode_boxes(locs, dboxes, clip=False), boxes, atol=1e-5)


def test_hard_negative_count_and_choice():
    gen = torch.Generator().manual_seed(0)
    ce = torch.rand(3, 20, generator=gen)
    positive = torch.zeros(3, 20, dtype=torch.bool)
    positive[0, :2] = True        # 2 positives -> 6 negatives
    positive[1, :6] = True        # 6 positives -> min(18, 14) = 14 negatives
    neg = hard_negative_mask(ce, positive)               # image 2: no positives -> none
    assert neg.sum(1).tolist() == [6, 14, 0]
    assert not (neg & positive).any()
    top6 = sorted(range(2, 20), key=lambda j: -float(ce[0, j]))[:6]
    assert sorted(neg[0].nonzero().flatten().tolist()) == sorted(top6)


def slow_loss(locs, confs, target_locs, target_labels):
    """Per-image, per-box reference of the MultiBox loss."""
    total = 0.0
    for n in range(locs.shape[0]):
        pos = [b for b in range(locs.shape[2]) if target_labels[n, b] > 0]
        if not pos:
            continue
        loc = sum(torch.nn.functional.smooth_l1_loss(locs[n, :, b], target_locs[n, :, b], reduction="sum")
                  for b in pos)
        ce = [float(-torch.log_softmax(confs[n, :, b], 0)[target_labels[n, b]]) for b in range(locs.shape[2])]
        negs = sorted((ce[b] for b in range(locs.shape[2]) if b not in pos), reverse=True)[:3 * len(pos)]
        total += (float(loc) + sum(ce[b] for b in pos) + sum(negs)) / len(pos)
    return total / locs.shape[0]


def test_multibox_loss_matches_slow_reference():
    gen = torch.Generator().manual_seed(0)
    locs, target_locs = torch.randn(3, 4, 30, generator=gen), torch.randn(3, 4, 30, generator=gen)
    confs = torch.randn(3, 5, 30, generator=gen)
    labels = torch.zeros(3, 30, dtype=torch.int64)
    labels[0, [1, 7]] = torch.tensor([2, 4])
    labels[1, 3:12] = 1                              # 9 positives: negatives capped at 21
    loss, parts = multibox_loss(locs, confs, target_locs, labels)
    assert loss.item() == pytest.approx(slow_loss(locs, confs, target_locs, labels), rel=1e-5)
    assert parts["positives"] == pytest.approx(11 / 3)


def test_batch_indices_cover_each_epoch_once():
    seen = torch.cat([train_demo.batch_indices(s, 4, 10, seed=0) for s in range(5)])   # two epochs of 10
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(train_demo.batch_indices(3, 4, 10, 0), train_demo.batch_indices(3, 4, 10, 0))


def test_learning_rate_schedule():
    assert train_demo.learning_rate(0.05, 1.0, warmup=0.1) == pytest.approx(0.5)
    assert train_demo.learning_rate(0.1, 1.0, warmup=0.1) == pytest.approx(1.0)
    assert train_demo.learning_rate(0.55, 1.0, warmup=0.1) == pytest.approx(0.01 + 0.99 * 0.5)
    assert train_demo.learning_rate(1.0, 1.0, warmup=0.1) == pytest.approx(0.01)


def test_flip_moves_boxes_with_pixels():
    img = torch.zeros(1, 3, 10, 10, dtype=torch.uint8)
    img[0, :, 2:5, 1:3] = 200                               # rows 2-4, columns 1-2
    box = torch.tensor([[0.1, 0.2, 0.3, 0.5]])
    out, boxes = augment(img, [box], torch.Generator().manual_seed(0), flip_p=1.0, jitter=0.0, gray_p=0.0)
    assert torch.allclose(boxes[0], torch.tensor([[0.7, 0.2, 0.9, 0.5]]))
    cols = out[0, 0].amax(0).nonzero().flatten().tolist()
    assert cols == [7, 8]                                   # x in [0.7, 0.9) of 10 pixels


def test_load_coco_set_labels_and_boxes(tmp_path):
    make_coco(tmp_path)
    data = load_coco_set(tmp_path, "train2017")
    assert data.images.shape == (3, 3, 300, 300) and data.images.dtype == torch.uint8
    assert data.label_map == {1: 1, 2: 3}                   # sorted category ids
    assert data.labels[0].tolist() == [2, 1]                # car (3) -> 2, person (1) -> 1
    assert torch.allclose(data.boxes[0][0], torch.tensor([20 / 320, 40 / 300, 120 / 320, 160 / 300]))
    with pytest.raises(DemoDataError, match="instances_val2017.json"):
        load_coco_set(tmp_path, "val2017")


def test_perfect_detections_score_ap_one(tmp_path):
    ann_file = make_coco(tmp_path)
    data = load_coco_set(tmp_path, "train2017")
    dets = [torch.cat([b, torch.ones(len(b), 1), lab[:, None].float()], 1) for b, lab in zip(data.boxes, data.labels)]
    stats = coco_map(dets, data, ann_file)
    assert stats["AP"] == pytest.approx(1.0) and stats["AP_large"] == pytest.approx(1.0)


def test_postprocess_keeps_one_confident_box():
    locs = torch.zeros(1, 4, 3)                  # decode to the default boxes themselves
    confs = torch.full((1, 3, 3), -10.0)
    confs[0, 0] = 10.0                           # background everywhere ...
    confs[0, :, 2] = torch.tensor([-10.0, -10.0, 10.0])   # ... except box 2, class 2
    (det,) = postprocess(locs, confs, DBOXES)
    assert det.shape == (1, 6)
    assert torch.allclose(det[0, :4], torch.tensor([0.4, 0.4, 0.6, 0.6])) and det[0, 5] == 2


def test_a_step_writes_a_loadable_fp16_checkpoint_and_resume_adds_one(tmp_path):
    """The smallest run that shows it: the smallest input the SSD takes, one image per step, bf16 autocast only on
    a CPU that computes bf16 natively (the default)."""
    make_coco(tmp_path / "data")
    out = tmp_path / "demo.pt"
    common = ["--out", str(out), "--work-dir", str(tmp_path / "work"), "--data", str(tmp_path / "data"),
              "--image-size", "257", "--batch-size", "1", "--threads", "2", "--no-progress", "--save-every", "1"]
    assert train_demo.main(common + ["--steps", "1"]) == 0
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert {"model", "label_map", "categories", "backbone", "num_classes", "image_size", "trained_steps",
            "data"} <= set(ckpt)
    assert ckpt["label_map"] == {1: 1, 2: 3} and ckpt["num_classes"] == 3 and ckpt["trained_steps"] == 1
    assert ckpt["image_size"] == 257
    floats = [v for v in ckpt["model"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert all(torch.isfinite(v.float()).all() for v in floats)
    assert ckpt["model"]["conf.0.weight"].shape == (4 * 3, 256, 3, 3)
    assert out.stat().st_size < 20e6
    assert train_demo.main(common + ["--steps", "2", "--resume"]) == 0
    assert torch.load(out, map_location="cpu", weights_only=True)["trained_steps"] == 2


def test_resume_without_state_is_a_clear_error(tmp_path):
    make_coco(tmp_path / "data")
    with pytest.raises(train_demo.TrainError, match="state.pt does not exist"):
        train_demo.main(["--out", str(tmp_path / "m.pt"), "--work-dir", str(tmp_path / "w"), "--data",
                         str(tmp_path / "data"), "--steps", "1", "--resume", "--no-progress"])
