"""SSD training targets and loss: match default boxes to ground truth, encode offsets, MultiBox loss.

Follows the MLPerf training reference (single_stage_detector, v0.5/v0.6):

- Matching (per image): IoU between every ground-truth box and every default box,
  both ``xyxy`` normalized. Each default box takes the ground truth it overlaps
  most; each ground truth also claims the default box that overlaps it most
  (forced match, wins over the IoU rule). A default box is positive when its IoU
  with its ground truth is >= ``iou_threshold`` (0.5) or it was force-matched.
- Encoding: ``t_xy = (g_xy - d_xy) / (0.1 * d_wh)``, ``t_wh = log(g_wh / d_wh) / 0.2``
  with ``g`` and ``d`` in ``cxcywh``; ``backends.ssd.boxes.decode_boxes`` inverts it.
- Loss: smooth-L1 on positive boxes' offsets (summed over the 4 coordinates) plus
  cross-entropy on positives and the hardest ``3 * positives`` negatives (ranked
  by their cross-entropy), divided by the image's number of positives, averaged
  over images. An image with no positives contributes 0.

Box maths is fp32; labels are 0 (background) or 1..num_classes-1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from backends.ssd.boxes import SCALE_WH, SCALE_XY, cxcywh_to_xyxy

NEG_POS_RATIO = 3


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """Tensor[..., 4] (x1, y1, x2, y2) -> Tensor[..., 4] (cx, cy, w, h)."""
    x1y1, x2y2 = boxes[..., :2], boxes[..., 2:]
    return torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1], -1)


def match(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, dboxes: torch.Tensor,
          iou_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Assign a ground truth (or background) to every default box.

    Args:
        gt_boxes: Tensor[G, 4] ground truth in (x1, y1, x2, y2) format, normalized; G may be 0.
        gt_labels: Tensor[G] int64 labels in 1..num_classes-1.
        dboxes: Tensor[B, 4] default boxes in (cx, cy, w, h) format, normalized.
        iou_threshold: IoU at or above which a default box is positive.

    Returns:
        boxes Tensor[B, 4] (x1, y1, x2, y2): the matched ground truth for positives, the default
        box itself elsewhere; labels Tensor[B] int64, 0 for background.
    """
    dboxes_xyxy = cxcywh_to_xyxy(dboxes.float())
    num_boxes = dboxes.shape[0]
    if gt_boxes.shape[0] == 0:
        return dboxes_xyxy.clone(), torch.zeros(num_boxes, dtype=torch.int64)
    iou = box_iou(gt_boxes.float(), dboxes_xyxy)           # [G, B]
    best_iou, best_gt = iou.max(dim=0)                      # per default box
    best_prior = iou.argmax(dim=1)                          # per ground truth
    # Forced matches: later ground truths win ties on the same prior, as in the reference.
    best_gt[best_prior] = torch.arange(gt_boxes.shape[0])
    best_iou[best_prior] = 2.0
    positive = best_iou >= iou_threshold
    labels = torch.where(positive, gt_labels.long()[best_gt], torch.zeros((), dtype=torch.int64))
    boxes = torch.where(positive.unsqueeze(1), gt_boxes.float()[best_gt], dboxes_xyxy)
    return boxes, labels


def encode(boxes: torch.Tensor, dboxes: torch.Tensor) -> torch.Tensor:
    """Offsets of ``boxes`` relative to ``dboxes``.

    Args:
        boxes: Tensor[..., B, 4] in (x1, y1, x2, y2) format, normalized, positive width and height.
        dboxes: Tensor[B, 4] in (cx, cy, w, h) format, normalized.

    Returns:
        Tensor[..., B, 4] offsets (t_x, t_y, t_w, t_h).
    """
    g = xyxy_to_cxcywh(boxes.float())
    t_xy = (g[..., :2] - dboxes[:, :2]) / (SCALE_XY * dboxes[:, 2:])
    t_wh = torch.log(g[..., 2:] / dboxes[:, 2:]) / SCALE_WH
    return torch.cat([t_xy, t_wh], -1)


def build_targets(gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor],
                  dboxes: torch.Tensor, iou_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Match and encode a batch.

    Args:
        gt_boxes: N tensors [G_i, 4] in (x1, y1, x2, y2) format, normalized.
        gt_labels: N int64 tensors [G_i].
        dboxes: Tensor[B, 4] in (cx, cy, w, h) format, normalized.

    Returns:
        target_locs Tensor[N, 4, B] (the model's layout) and target_labels Tensor[N, B] int64.
    """
    locs, labels = [], []
    for boxes, lab in zip(gt_boxes, gt_labels):
        matched, matched_labels = match(boxes, lab, dboxes, iou_threshold)
        locs.append(encode(matched, dboxes).t())
        labels.append(matched_labels)
    return torch.stack(locs), torch.stack(labels)


def hard_negative_mask(ce: torch.Tensor, positive: torch.Tensor, ratio: int = NEG_POS_RATIO) -> torch.Tensor:
    """Pick, per image, the ``min(ratio * positives, negatives)`` negatives with the highest loss.

    Args:
        ce: Tensor[N, B] per-box cross-entropy.
        positive: Tensor[N, B] bool.

    Returns:
        Tensor[N, B] bool, True for the chosen negatives (never a positive).
    """
    num_pos = positive.sum(dim=1, keepdim=True)
    num_neg = torch.minimum(ratio * num_pos, positive.shape[1] - num_pos)
    ranked = ce.detach().float().masked_fill(positive, float("-inf"))
    order = ranked.argsort(dim=1, descending=True)
    rank = order.argsort(dim=1)
    return (rank < num_neg) & ~positive


def multibox_loss(locs: torch.Tensor, confs: torch.Tensor, target_locs: torch.Tensor,
                  target_labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """SSD loss for a batch.

    Args:
        locs: Tensor[N, 4, B] predicted offsets.
        confs: Tensor[N, C, B] class logits.
        target_locs: Tensor[N, 4, B] encoded matched boxes.
        target_labels: Tensor[N, B] int64, 0 = background.

    Returns:
        The scalar loss (fp32) and its parts {"loc": ..., "conf": ..., "positives": ...} as floats.
    """
    locs, confs = locs.float(), confs.float()
    positive = target_labels > 0
    num_pos = positive.sum(dim=1)
    loc = F.smooth_l1_loss(locs, target_locs, reduction="none").sum(dim=1)      # [N, B]
    loc = (loc * positive).sum(dim=1)
    ce = F.cross_entropy(confs, target_labels, reduction="none")               # [N, B]
    chosen = positive | hard_negative_mask(ce, positive)
    conf = (ce * chosen).sum(dim=1)
    has_pos = num_pos > 0
    scale = has_pos.float() / num_pos.clamp(min=1).float()
    loc_term, conf_term = (loc * scale).mean(), (conf * scale).mean()
    parts = {"loc": float(loc_term.detach()), "conf": float(conf_term.detach()),
             "positives": float(num_pos.float().mean())}
    return loc_term + conf_term, parts
