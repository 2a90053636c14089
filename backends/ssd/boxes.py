"""Box maths of the SSD output: decode regression offsets against default boxes.

No model imports: this file only knows tensors. Assumptions (MLPerf training
reference, SPEC.md section 2-3): offsets ``t`` are laid out (N, 4, B) as the
heads produce them, default boxes are ``cxcywh`` normalized to [0, 1], and the
decode constants are scale_xy = 0.1 and scale_wh = 0.2:

    cx, cy = 0.1 * t_xy * d_wh + d_xy
    w, h   = exp(0.2 * t_wh) * d_wh

Everything runs in fp32 whatever the network's precision. Decoded boxes are
returned in ``xyxy`` format, normalized, and clipped to the image [0, 1] (the
seed meant to clip but its clamp had no effect).
"""
from __future__ import annotations

import torch

SCALE_XY = 0.1
SCALE_WH = 0.2


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """boxes (Tensor[..., 4]) in (cx, cy, w, h) format -> Tensor[..., 4] in (x1, y1, x2, y2) format."""
    cxcy, wh = boxes[..., :2], boxes[..., 2:]
    return torch.cat([cxcy - 0.5 * wh, cxcy + 0.5 * wh], dim=-1)


def decode_boxes(locs: torch.Tensor, dboxes: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """Turn regression offsets into boxes.

    Args:
        locs: Tensor[N, 4, B], offsets (t_cx, t_cy, t_w, t_h) per default box, any float dtype.
        dboxes: Tensor[B, 4], default boxes in (cx, cy, w, h) format, normalized.
        clip: clip the result to [0, 1].

    Returns:
        Tensor[N, B, 4] fp32 in (x1, y1, x2, y2) format, normalized.
    """
    if locs.dim() != 3 or locs.shape[1] != 4 or locs.shape[2] != dboxes.shape[0]:
        raise ValueError(f"locs must be [N, 4, {dboxes.shape[0]}] to match the default boxes, "
                         f"got {list(locs.shape)}")
    t = locs.float().transpose(1, 2)             # [N, B, 4]
    d = dboxes.to(device=t.device, dtype=torch.float32)
    cxcy = SCALE_XY * t[..., :2] * d[:, 2:] + d[:, :2]
    wh = torch.exp(SCALE_WH * t[..., 2:]) * d[:, 2:]
    boxes = cxcywh_to_xyxy(torch.cat([cxcy, wh], dim=-1))
    return boxes.clamp_(0.0, 1.0) if clip else boxes


def class_scores(confs: torch.Tensor) -> torch.Tensor:
    """Softmax over classes, in fp32.

    Args:
        confs: Tensor[N, C, B] logits, class 0 = background, any float dtype.

    Returns:
        Tensor[N, C, B] fp32 probabilities.
    """
    return torch.softmax(confs.float(), dim=1)


def box_area_px(boxes: torch.Tensor, image_hw: torch.Tensor) -> torch.Tensor:
    """Area in original image pixels, (x2 - x1) * W * (y2 - y1) * H.

    Args:
        boxes: Tensor[N, B, 4] in (x1, y1, x2, y2) format, normalized.
        image_hw: Tensor[N, 2], (height, width) of each original image in pixels.

    Returns:
        Tensor[N, B] fp32.
    """
    hw = image_hw.to(device=boxes.device, dtype=torch.float32)
    w = (boxes[..., 2] - boxes[..., 0]) * hw[:, 1:2]
    h = (boxes[..., 3] - boxes[..., 1]) * hw[:, 0:1]
    return w * h
