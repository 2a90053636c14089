"""Which boxes of a group overlap above an IoU threshold: the one test both NMS forms share.

Boxes are ``xyxy`` (any scale), computed in fp32 whatever the input dtype,
elementwise only (no reduction), so a pair's answer never depends on which
other pairs are computed with it: the dense form (backends/ssd/postprocess.py)
and the row-block form (backends/ssd/static_postprocess.py) get the same bits.
"""
from __future__ import annotations

import torch

BLOCK_BYTES = 64 * 2 ** 20   # bound on the temporaries of one block of overlaps (and of one chunk of top-k keys)
PAIR_BYTES = 16              # per (row, column) pair while overlaps are built: about four fp32 temporaries


def pair_overlap(rows: torch.Tensor, cols: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Which (row, column) pairs of each group overlap above the threshold.

    Args:
        rows: Tensor[G, r, 4] in (x1, y1, x2, y2) format.
        cols: Tensor[G, k, 4] in (x1, y1, x2, y2) format.
        iou_threshold: t in IoU > t.

    Returns:
        Tensor[G, r, k] bool: IoU(i, j) > t, tested as inter * (1 + t) > t * (area_i + area_j),
        which is the same inequality without a division (and False for two empty boxes).
        Elementwise fp32 operations only, so a pair's answer never depends on the other pairs.
    """
    a, b = rows.float(), cols.float()
    ax1, ay1, ax2, ay2 = (a[..., i, None] for i in range(4))                  # [G, r, 1] each
    bx1, by1, bx2, by2 = (b[..., None, :, i] for i in range(4))               # [G, 1, k] each
    iw = torch.minimum(ax2, bx2).sub_(torch.maximum(ax1, bx1))
    ih = torch.minimum(ay2, by2).sub_(torch.maximum(ay1, by1))
    inter = iw.clamp_(min=0).mul_(ih.clamp_(min=0)).mul_(1.0 + iou_threshold)
    return inter > ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1)).mul_(iou_threshold)
