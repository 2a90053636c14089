"""Detections from decoded boxes and class scores: threshold, top-k per class, NMS, top-k per image.

Assumptions (MLPerf SSD, SPEC.md section 3.6): for every class 1..C-1 keep the
boxes whose score exceeds ``score_threshold``, the ``max_per_class`` best of
them, run greedy NMS per class at ``nms_iou``, then keep the
``max_detections`` best per image. Boxes are ``xyxy``, normalized, already
clipped to [0, 1]; class 0 is background and never reported.

The whole batch is handled at once, without a Python loop over images,
classes or boxes and without host syncs until the final split: every
(image, class) pair is one NMS group. Groups are kept apart with the usual
coordinate-offset trick (group g is shifted by 2 g, which separates boxes
living in [0, 1]), done in fp64: in fp32 an offset of a few hundred would
round coordinates to about 1e-5 and make a result depend on the image's
position in its batch. IoU is thus computed on the exact fp32 boxes, and an
image's detections do not depend on the other images in its batch.
"""
from __future__ import annotations

import torch
import torchvision


def _rank_within(groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Position of each element inside its group, for ``groups`` already sorted (Tensor[K] int64)."""
    counts = torch.bincount(groups, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(groups.numel(), device=groups.device) - starts[groups]


def _stable_group_sort(groups: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Order that sorts by group, and by decreasing score inside a group (ties keep input order)."""
    by_score = torch.sort(scores, descending=True, stable=True).indices
    by_group = torch.sort(groups[by_score], stable=True).indices
    return by_score[by_group]


def postprocess(boxes: torch.Tensor, scores: torch.Tensor, score_threshold: float = 0.05,
                nms_iou: float = 0.5, max_per_class: int = 200,
                max_detections: int = 200) -> list[torch.Tensor]:
    """Select the final detections of a batch.

    Args:
        boxes: Tensor[N, B, 4] in (x1, y1, x2, y2) format, normalized, clipped to [0, 1].
        scores: Tensor[N, C, B] class probabilities (class 0 = background); a box already
            removed (masked map, area filter) has score 0 for every class.
        score_threshold: a box is a candidate for a class when its score is strictly above this.
        nms_iou: a box is suppressed by a better box of the same class when IoU > nms_iou.
        max_per_class: candidates kept per (image, class) before NMS.
        max_detections: detections kept per image after NMS.

    Returns:
        One fp32 Tensor[K, 6] per image, on the input device: (x1, y1, x2, y2, score, label),
        sorted by decreasing score, label in 1..C-1. K may be 0.
    """
    n, c, b = scores.shape
    if boxes.shape != (n, b, 4):
        raise ValueError(f"boxes must be [N, B, 4] = [{n}, {b}, 4] to match scores {list(scores.shape)}, "
                         f"got {list(boxes.shape)}")
    scores = scores.float()
    fg = scores[:, 1:, :]                                     # [N, C-1, B]
    img, cls, box = torch.nonzero(fg > score_threshold, as_tuple=True)
    cand_scores = fg[img, cls, box]
    groups = img * (c - 1) + cls                              # one NMS group per (image, class)

    # The max_per_class best candidates of each group.
    order = _stable_group_sort(groups, cand_scores)
    img, cls, box, cand_scores, groups = img[order], cls[order], box[order], cand_scores[order], groups[order]
    keep = _rank_within(groups, n * (c - 1)) < max_per_class
    img, cls, box, cand_scores, groups = img[keep], cls[keep], box[keep], cand_scores[keep], groups[keep]

    # Greedy NMS per group, fp64 with groups 2 apart (boxes lie in [0, 1]).
    cand_boxes = boxes.float()[img, box]                      # [K, 4]
    shifted = cand_boxes.double() + (2.0 * groups.double())[:, None]
    kept = torchvision.ops.nms(shifted, cand_scores.double(), nms_iou)  # by decreasing score

    # The max_detections best per image.
    kept = kept[torch.sort(img[kept], stable=True).indices]   # by image, then decreasing score
    kept = kept[_rank_within(img[kept], n) < max_detections]
    dets = torch.cat([cand_boxes[kept], cand_scores[kept, None], (cls[kept] + 1).float()[:, None]], dim=1)
    per_image = torch.bincount(img[kept], minlength=n).tolist()  # the one host sync
    return list(torch.split(dets, per_image))
