"""Detections from decoded boxes and class scores: threshold, top-k per class, NMS, top-k per image.

Assumptions (MLPerf SSD, SPEC.md section 3.6): for every class 1..C-1 keep the
boxes whose score exceeds ``score_threshold``, the ``max_per_class`` best of
them, run greedy NMS per class at ``nms_iou``, then keep the
``max_detections`` best per image. Boxes are ``xyxy``, normalized, already
clipped to [0, 1]; class 0 is background and never reported. All maths fp32.

The whole batch is handled at once: every (image, class) pair is one NMS group
of at most ``max_per_class`` boxes, laid out as a padded [G, k] block. Greedy
NMS is computed exactly, as the fixed point of "a box is kept when no kept,
better box of its group overlaps it above the threshold" (Cluster-NMS, Zheng
et al. 2020): iterating that rule on all groups at once reaches greedy NMS's
answer in a few steps (at most k). This replaces torchvision's
``batched_nms``, whose coordinate-offset trick makes its CPU kernel compare
every candidate with every other one (O(K^2) over up to 80 x 200 boxes per
image: half a second per image here) and whose offsets cost fp32 precision.
There is no Python loop over images, classes or boxes. Groups go through NMS
a chunk at a time, so their [g, k, k] overlaps stay within ``BLOCK_BYTES``
(backends/ssd/overlap.py). An image's result never depends on its batch.

This form is for the CPU, where a host sync costs nothing: the candidates'
shapes depend on the scores (``nonzero``, boolean indexing, ``unique``) and
each NMS step asks whether it has converged (``torch.equal``), up to k host
syncs per batch. On CUDA each of those stalls the host until the device
catches up, so there :func:`postprocess` runs the static-shape form
(backends/ssd/static_postprocess.py): the same detections, bit for bit, with
one host sync per batch. torchvision's ``batched_nms`` is no way out on either
device: above 1,000 boxes on the CPU or 25,000 on CUDA (torchvision 0.29:
``boxes.numel()`` above 4,000 or 100,000) it loops over the classes (a sync per
class), below that it offsets each class's coordinates, which costs fp32
precision, and its CUDA kernel builds an N x N/64 bit mask.
"""
from __future__ import annotations

import torch

from .overlap import BLOCK_BYTES, PAIR_BYTES, pair_overlap
from .static_postprocess import select, split


def _rank_within(groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Position of each element inside its group, for ``groups`` already sorted (Tensor[K] int64)."""
    counts = torch.bincount(groups, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(groups.numel(), device=groups.device) - starts[groups]


def _group_score_order(groups: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Order that sorts by group, and by decreasing score inside a group (ties keep input order)."""
    by_score = torch.sort(scores, descending=True, stable=True).indices
    by_group = torch.sort(groups[by_score], stable=True).indices
    return by_score[by_group]


def grouped_nms(boxes: torch.Tensor, valid: torch.Tensor, iou_threshold: float,
                block_bytes: int | None = None) -> torch.Tensor:
    """Greedy NMS inside each group, a chunk of groups at once (their [g, k, k] overlaps within ``block_bytes``).

    Args:
        boxes: Tensor[G, k, 4] in (x1, y1, x2, y2) format, each group sorted by decreasing score.
        valid: Tensor[G, k] bool, False on padding.
        iou_threshold: a box is suppressed by a better kept box of its group when IoU > threshold.
        block_bytes: bound on one chunk's temporaries (default ``BLOCK_BYTES``; groups are independent,
            so chunks change no result).

    Returns:
        Tensor[G, k] bool, the boxes greedy NMS keeps.
    """
    g, k = valid.shape
    block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes
    chunk = max(1, block_bytes // max(1, k * k * PAIR_BYTES))
    if g > chunk:
        return torch.cat([grouped_nms(boxes[i:i + chunk], valid[i:i + chunk], iou_threshold, block_bytes)
                          for i in range(0, g, chunk)])
    better = torch.ones(k, k, dtype=torch.bool, device=boxes.device).triu_(1)   # [i, j]: i ranks before j
    overlaps = (pair_overlap(boxes, boxes, iou_threshold) & better & valid[:, :, None]).float()  # [G, i, j]
    keep = valid
    for _ in range(k):   # converges in a few steps; k bounds it (box i is final after i steps)
        suppressed = torch.bmm(keep.float()[:, None, :], overlaps)[:, 0] > 0   # any kept i overlapping j
        new = valid & ~suppressed
        if torch.equal(new, keep):
            break
        keep = new
    return keep


def postprocess(boxes: torch.Tensor, scores: torch.Tensor, score_threshold: float = 0.05,
                nms_iou: float = 0.5, max_per_class: int = 200,
                max_detections: int = 200, static: bool | None = None) -> list[torch.Tensor]:
    """Select the final detections of a batch.

    Args:
        boxes: Tensor[N, B, 4] in (x1, y1, x2, y2) format, normalized, clipped to [0, 1].
        scores: Tensor[N, C, B] class probabilities (class 0 = background); a box already
            removed (masked map, area filter) has score 0 for every class.
        score_threshold: a box is a candidate for a class when its score is strictly above this.
        nms_iou: a box is suppressed by a better box of the same class when IoU > nms_iou.
        max_per_class: candidates kept per (image, class) before NMS.
        max_detections: detections kept per image after NMS.
        static: use the form with static shapes (backends/ssd/static_postprocess.py: one host sync);
            default on CUDA. The two return the same detections.

    Returns:
        One fp32 Tensor[K, 6] per image, on the input device: (x1, y1, x2, y2, score, label),
        sorted by decreasing score, label in 1..C-1. K may be 0.
    """
    n, c, b = scores.shape
    if boxes.shape != (n, b, 4):
        raise ValueError(f"boxes must be [N, B, 4] = [{n}, {b}, 4] to match scores {list(scores.shape)}, "
                         f"got {list(boxes.shape)}")
    if scores.is_cuda if static is None else static:
        return split(*select(boxes, scores, score_threshold, nms_iou, max_per_class, max_detections))
    fg = scores.float()[:, 1:, :]                                 # [N, C-1, B]
    passing = fg > score_threshold
    cand_scores = fg[passing]                                     # row-major, like nonzero
    flat = torch.nonzero(passing.view(n * (c - 1), b))            # [K, 2]: group, box
    groups, box = flat[:, 0], flat[:, 1]                          # group = image * (C-1) + class - 1

    # The max_per_class best candidates of each group, grouped and sorted by decreasing score.
    order = _group_score_order(groups, cand_scores)
    groups, box, cand_scores = groups[order], box[order], cand_scores[order]
    rank = _rank_within(groups, n * (c - 1))
    top = rank < max_per_class
    groups, box, cand_scores, rank = groups[top], box[top], cand_scores[top], rank[top]
    img = torch.div(groups, c - 1, rounding_mode="floor")
    cand_boxes = boxes.float().reshape(n * b, 4)[img * b + box]   # [K, 4]

    # Padded [G, k] layout: one row per group that has candidates.
    _, slot, counts = torch.unique_consecutive(groups, return_inverse=True, return_counts=True)
    k = int(counts.max()) if counts.numel() else 0
    padded = cand_boxes.new_zeros(counts.numel(), k, 4)
    padded[slot, rank] = cand_boxes
    valid = torch.zeros(counts.numel(), k, dtype=torch.bool, device=boxes.device)
    valid[slot, rank] = True
    kept = grouped_nms(padded, valid, nms_iou)[slot, rank]       # [K] bool, candidate order

    # The max_detections best per image.
    idx = torch.nonzero(kept)[:, 0]
    idx = idx[torch.sort(cand_scores[idx], descending=True, stable=True).indices]
    idx = idx[torch.sort(img[idx], stable=True).indices]         # by image, then decreasing score
    idx = idx[_rank_within(img[idx], n) < max_detections]
    labels = (groups[idx] - img[idx] * (c - 1) + 1).float()
    dets = torch.cat([cand_boxes[idx], cand_scores[idx, None], labels[:, None]], dim=1)
    per_image = torch.bincount(img[idx], minlength=n).tolist()   # the final host sync
    return list(torch.split(dets, per_image))
