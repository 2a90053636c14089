"""Decode and post-processing: golden arithmetic and a slow, obviously correct NMS reference."""
import math

import pytest
import torch

from backends.ssd.boxes import box_area_px, class_scores, cxcywh_to_xyxy, decode_boxes
from backends.ssd.postprocess import postprocess


def test_decode_by_hand():
    dboxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.95, 0.05, 0.2, 0.2]])
    locs = torch.tensor([[[1.0, 0.0], [-2.0, 0.0], [5 * math.log(2), 0.0], [0.0, 0.0]]])  # [1, 4, 2]
    boxes = decode_boxes(locs, dboxes)
    cx, cy = 0.1 * 1 * 0.2 + 0.5, 0.1 * -2 * 0.4 + 0.5          # 0.52, 0.42
    w, h = math.exp(0.2 * 5 * math.log(2)) * 0.2, 0.4           # 0.4, 0.4
    expected = torch.tensor([[[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2],
                              [0.95 - 0.1, 0.0, 1.0, 0.05 + 0.1]]])  # second one clipped: y1 -0.05 -> 0, x2 1.05 -> 1
    assert boxes.dtype == torch.float32
    torch.testing.assert_close(boxes, expected)
    unclipped = decode_boxes(locs, dboxes, clip=False)
    torch.testing.assert_close(unclipped[0, 1], torch.tensor([0.85, -0.05, 1.05, 0.15]))


def test_decode_runs_in_fp32_for_half_inputs():
    dboxes = torch.tensor([[0.5, 0.5, 0.1, 0.1]])
    locs = torch.full((1, 4, 1), 0.5, dtype=torch.float16)
    assert decode_boxes(locs, dboxes).dtype == torch.float32


def test_cxcywh_to_xyxy_and_area_by_hand():
    xyxy = cxcywh_to_xyxy(torch.tensor([[0.5, 0.25, 0.2, 0.1]]))
    torch.testing.assert_close(xyxy, torch.tensor([[0.4, 0.2, 0.6, 0.3]]))
    area = box_area_px(xyxy[None], torch.tensor([[480, 640]]))   # (0.2 * 640) * (0.1 * 480)
    torch.testing.assert_close(area, torch.tensor([[0.2 * 640 * 0.1 * 480]]))


def test_softmax_by_hand():
    confs = torch.tensor([[[0.0], [math.log(3.0)]]], dtype=torch.bfloat16)   # [1, 2, 1]
    scores = class_scores(confs)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores[0, :, 0], torch.tensor([0.25, 0.75]), atol=2e-3, rtol=0)


def reference(boxes, scores, thr=0.05, iou_thr=0.5, per_class=200, per_image=200):
    """Slow greedy NMS, one image, plain Python floats: a list of (x1, y1, x2, y2, score, label)."""
    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0
    thr32 = torch.tensor(thr, dtype=torch.float32).item()   # the threshold as an fp32 tensor compares
    out = []
    for c in range(1, scores.shape[0]):
        cand = [(scores[c, i].item(), i) for i in range(scores.shape[1]) if scores[c, i].item() > thr32]
        cand = sorted(cand, key=lambda t: -t[0])[:per_class]
        kept = []
        for s, i in cand:
            box = boxes[i].tolist()
            if all(iou(box, boxes[j].tolist()) <= iou_thr for _, j in kept):
                kept.append((s, i))
        out += [(*boxes[i].tolist(), s, float(c)) for s, i in kept]
    return sorted(out, key=lambda t: -t[4])[:per_image]


def assert_same(dets, ref):
    assert dets.shape == (len(ref), 6)
    if ref:
        torch.testing.assert_close(dets, torch.tensor(ref, dtype=torch.float32), rtol=0, atol=0)


def test_nms_just_above_and_below_the_iou_threshold():
    # Box A = [0.1, 0.1, 0.5, 0.5]; B = A shifted right by dx. IoU = 0.5 exactly at dx = 0.4 / 3.
    base = [0.1, 0.1, 0.5, 0.5]
    boxes, expect_kept = [base], []
    for eps in (-1e-3, -1e-5, 1e-5, 1e-3):
        dx = 0.4 / 3 + eps
        boxes.append([base[0] + dx, base[1], base[2] + dx, base[3]])
        inter = (0.4 - dx) * 0.4
        expect_kept.append(inter / (0.32 - inter) <= 0.5)      # eps < 0: IoU above 0.5, suppressed
    assert expect_kept == [False, False, True, True]
    n = len(boxes)
    boxes_t = torch.tensor(boxes)
    for shifted in range(1, n):   # each shifted box alone against A (A scores higher)
        scores = torch.zeros(3, 2)
        scores[1] = torch.tensor([0.9, 0.8])
        dets = postprocess(boxes_t[[0, shifted]][None], scores[None])[0]
        assert_same(dets, reference(boxes_t[[0, shifted]], scores))
        assert dets.shape[0] == (2 if expect_kept[shifted - 1] else 1)


def test_score_threshold_is_strict():
    boxes = torch.tensor([[0.0, 0.0, 0.1, 0.1], [0.2, 0.2, 0.3, 0.3], [0.4, 0.4, 0.5, 0.5]])
    scores = torch.zeros(2, 3)
    scores[1] = torch.tensor([0.049, 0.05, 0.0501])
    dets = postprocess(boxes[None], scores[None])[0]
    assert dets[:, 4].tolist() == pytest.approx([0.0501])
    assert_same(dets, reference(boxes, scores))


def test_random_clusters_match_the_reference():
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(6, 2, generator=g) * 0.6 + 0.2
    pick = torch.randint(0, 6, (300,), generator=g)
    cxcy = centres[pick] + 0.03 * torch.randn(300, 2, generator=g)
    wh = 0.1 + 0.1 * torch.rand(300, 2, generator=g)
    boxes = cxcywh_to_xyxy(torch.cat([cxcy, wh], 1)).clamp(0, 1)
    scores = torch.softmax(3 * torch.randn(2, 5, 300, generator=g), dim=1)   # 2 images, 5 classes
    boxes2 = torch.stack([boxes, boxes.flip(0)])
    dets = postprocess(boxes2, scores, max_per_class=40, max_detections=60)
    for i in range(2):
        ref = reference(boxes2[i], scores[i], per_class=40, per_image=60)
        assert 20 < len(ref) <= 60
        assert_same(dets[i], ref)


def test_top_k_per_class_and_per_image():
    # 250 disjoint tiny boxes on a grid, distinct scores: NMS removes nothing.
    ij = torch.stack(torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij"), -1).reshape(-1, 2)[:250]
    boxes = torch.cat([ij / 16, ij / 16 + 0.03], 1)
    scores = torch.zeros(3, 250)
    scores[1] = torch.linspace(0.1, 0.9, 250)
    scores[2, :100] = torch.linspace(0.06, 0.95, 100)
    roomy = postprocess(boxes[None], scores[None], max_per_class=200, max_detections=400)[0]
    assert (roomy[:, 5] == 1).sum() == 200 and (roomy[:, 5] == 2).sum() == 100
    assert roomy[roomy[:, 5] == 1, 4].min() == scores[1, 50]          # the 200 best of class 1: indices 50..249
    dets = postprocess(boxes[None], scores[None], max_per_class=200, max_detections=230)[0]
    assert dets.shape[0] == 230
    assert torch.equal(dets, roomy[:230])
    assert torch.all(dets[:-1, 4] >= dets[1:, 4])
    assert_same(dets, reference(boxes, scores, per_class=200, per_image=230))


def test_classes_do_not_suppress_each_other_and_empty_images_are_normal():
    boxes = torch.tensor([[[0.1, 0.1, 0.4, 0.4]], [[0.1, 0.1, 0.4, 0.4]]])
    scores = torch.tensor([[[0.1], [0.45], [0.45]], [[1.0], [0.0], [0.0]]])   # image 1: background only
    dets = postprocess(boxes, scores)
    assert dets[0][:, 5].sort().values.tolist() == [1.0, 2.0]
    assert dets[1].shape == (0, 6) and dets[1].dtype == torch.float32
    empty = postprocess(torch.zeros(3, 0, 4), torch.zeros(3, 81, 0))
    assert [d.shape for d in empty] == [(0, 6)] * 3


def test_result_for_an_image_does_not_depend_on_its_batch():
    g = torch.Generator().manual_seed(0)
    boxes = cxcywh_to_xyxy(torch.cat([torch.rand(3, 500, 2, generator=g), 0.2 * torch.rand(3, 500, 2, generator=g)],
                                     -1)).clamp(0, 1)
    scores = torch.softmax(4 * torch.randn(3, 7, 500, generator=g), dim=1)
    batch = postprocess(boxes, scores)
    for i in range(3):
        assert torch.equal(postprocess(boxes[i:i + 1], scores[i:i + 1])[0], batch[i])


def test_dense_clusters_match_torchvision_nms_per_class():
    # Long suppression chains (many nearly identical boxes): the grouped fixed point must equal greedy NMS.
    import torchvision
    g = torch.Generator().manual_seed(1)
    cxcy = 0.5 + 0.02 * torch.randn(2000, 2, generator=g)
    wh = 0.05 + 0.05 * torch.rand(2000, 2, generator=g)
    boxes = cxcywh_to_xyxy(torch.cat([cxcy, wh], 1)).clamp(0, 1)
    scores = torch.softmax(2 * torch.randn(1, 21, 2000, generator=g), dim=1)
    dets = postprocess(boxes[None], scores, max_per_class=200, max_detections=10000)[0]
    expected = []
    for c in range(1, 21):
        s = scores[0, c]
        idx = torch.nonzero(s > 0.05)[:, 0]
        idx = idx[torch.sort(s[idx], descending=True, stable=True).indices][:200]
        keep = idx[torchvision.ops.nms(boxes[idx].double(), s[idx].double(), 0.5)]
        expected += [(c, i) for i in keep.tolist()]
    got = sorted(zip(dets[:, 5].long().tolist(), dets[:, 4].tolist()))
    want = sorted((c, scores[0, c, i].item()) for c, i in expected)
    assert len(got) == len(want) > 100 and got == want


# -- the static-shape form (CUDA) --------------------------------------------------------------------

def _clusters(seed, n=3, c=6, b=400, ties=False):
    g = torch.Generator().manual_seed(seed)
    cxcy = 0.5 + 0.1 * torch.randn(n, b, 2, generator=g)
    wh = 0.05 + 0.1 * torch.rand(n, b, 2, generator=g)
    boxes = cxcywh_to_xyxy(torch.cat([cxcy, wh], -1)).clamp(0, 1)
    scores = torch.softmax(3 * torch.randn(n, c, b, generator=g), dim=1)
    return boxes, ((scores * 64).round() / 64 if ties else scores)   # rounded: many equal scores


@pytest.mark.parametrize("ties", [False, True])
def test_static_form_gives_the_cpu_forms_bytes(ties, monkeypatch):
    from backends.ssd import static_postprocess
    boxes, scores = _clusters(0, ties=ties)
    for kw in ({"max_per_class": 40, "max_detections": 60}, {"max_per_class": 500, "max_detections": 500}):
        want = postprocess(boxes, scores, static=False, **kw)
        assert sum(d.shape[0] for d in want) > 50
        for block in (static_postprocess.BLOCK_BYTES, 10_000):     # one block of rows, or one row at a time
            monkeypatch.setattr(static_postprocess, "BLOCK_BYTES", block)
            got = postprocess(boxes, scores, static=True, **kw)
            assert all(torch.equal(a, b) for a, b in zip(want, got))
    empty = postprocess(torch.zeros(2, 0, 4), torch.zeros(2, 81, 0), static=True)
    assert [d.shape for d in empty] == [(0, 6)] * 2


def test_cpu_form_chunks_of_groups_change_nothing():
    from backends.ssd.postprocess import grouped_nms
    g = torch.Generator().manual_seed(2)
    boxes = cxcywh_to_xyxy(torch.cat([0.5 + 0.05 * torch.randn(40, 30, 2, generator=g),
                                      0.1 + 0.1 * torch.rand(40, 30, 2, generator=g)], -1))
    valid = torch.rand(40, 30, generator=g) > 0.2
    whole = grouped_nms(boxes, valid, 0.5)
    assert torch.equal(grouped_nms(boxes, valid, 0.5, block_bytes=30 * 30 * 16 * 3), whole)   # 3 groups a chunk
    assert 0 < whole.sum() < valid.sum()


class _HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the ops whose result the host must read from the device (a sync on CUDA)."""

    READS = {"nonzero", "_local_scalar_dense", "equal", "is_nonzero", "unique_consecutive", "masked_select",
             "_unique2", "unique_dim"}

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        bool_index = func.__name__.startswith("index.") and any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in (args[1] if len(args) > 1 else []) or [])
        self.reads += func.__name__.split(".")[0] in self.READS or bool_index
        return func(*args, **(kwargs or {}))


def test_static_form_reads_the_device_once_per_batch(monkeypatch):
    boxes, scores = _clusters(1)
    tolist = torch.Tensor.tolist
    calls = []
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: calls.append(t.shape) or tolist(t))
    with _HostReads() as cpu_form:
        postprocess(boxes, scores, static=False)
    with _HostReads() as static_form:
        dets = postprocess(boxes, scores, static=True)
    assert cpu_form.reads > 10                     # nonzero, boolean indexing, unique, one torch.equal per step
    assert static_form.reads == 0 and calls[-1:] == [(3,)] and len(calls) == 2   # one tolist each: the counts
    assert len(dets) == 3


def test_static_form_at_batch_32_reads_no_value_and_bounds_its_memory():
    """On the meta device (shapes, no values) any op that reads a value fails: the whole selection of a batch
    of 32 at 300 + 600 runs there, and its temporaries stay near BLOCK_BYTES (the dense [G, k, k] fp32
    overlap of 32 x 80 groups of 200 would be 32 * 80 * 200 * 200 * 4 bytes)."""
    from backends.model_config import ModelConfig
    from backends.pytorch.graph_memory import _LiveBytes
    from backends.ssd.static_postprocess import BLOCK_BYTES, select
    from backends.ssd.two_scale import build_passes
    n, c = 32, 81
    b = sum(p.dboxes.shape[0] for p in build_passes(ModelConfig(image_size=(300, 600))))
    boxes, scores = torch.empty(n, b, 4, device="meta"), torch.empty(n, c, b, device="meta")
    with _LiveBytes() as live:
        dets, counts = select(boxes, scores, 0.05, 0.5, 200, 200)
    assert dets.shape == (n, 200, 6) and counts.shape == (n,)
    extra = live.peak - scores.untyped_storage().nbytes()      # views of the input count as its storage
    assert extra < 2 * BLOCK_BYTES < 32 * 80 * 200 * 200 * 4
