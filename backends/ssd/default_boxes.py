"""Default (anchor) boxes of the MLPerf SSD, at any square input size.

All numbers come from the MLPerf training reference (SSD-ResNet34): base scales
[21, 45, 99, 153, 207, 261, 315] pixels of the training input, aspect ratios
[[2], [2, 3], [2, 3], [2, 3], [2], [2]], (the decode constants 0.1 / 0.2 live in decode.py). The same
pixel scales are used at every input size S, so at 2S the boxes are relatively
half as large. Boxes are ``cxcywh`` normalized to [0, 1], clamped element-wise
as training did, ordered map, box shape, row, column (the model's head order).

Steps (``dboxes_steps``, pixels per cell) place the box centres on a grid of
fk cells per side. The two MLPerf references differ in how:

- training (SSD300, mlcommons/training ``single_stage_detector``): fk = S / step,
  so the 300 steps [8, 16, 32, 64, 100, 300] give 37.5, 18.75, ... cells;
- ssd1200 (the inference SSD-ResNet34, mlcommons/inference
  ``vision/classification_and_detection/python/models/ssd_r34.py``): steps are
  int(1200 / f) = [24, 48, 92, 171, 400, 400] and fk = 1200 // step, which is
  the feature size f again (13 cells, not 1200 / 92 = 13.04).

Without steps fk is the feature size, which is the ssd1200 reference's grid
at any size.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from backends.ssd.geometry import (  # noqa: F401 - the geometry checks are part of this module's interface
    CELLS_PER_SIDE,
    GeometryError,
    check_steps,
    fitting_steps,
    map_sizes,
)
from backends.ssd.model import BOXES_PER_LOCATION

BASE_SCALES_PX = (21, 45, 99, 153, 207, 261, 315)
ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))


def box_scales_px(dboxes_scale: float) -> list[int]:
    """ceil(dboxes_scale * base scale) for the 7 base scales, in pixels."""
    return [math.ceil(dboxes_scale * s - 1e-9) for s in BASE_SCALES_PX]


def default_boxes(image_size: int, dboxes_scale: float = 1.0, steps: Sequence[float] | None = None,
                  variant: str = "training", mask: Sequence[int] | None = None) -> torch.Tensor:
    """Default boxes for a square input of ``image_size`` pixels.

    Args:
        image_size: input side S in pixels.
        dboxes_scale: multiplies the base scales (2 for a model trained at 700).
        steps: per-map step in pixels (fk = S / step, or S // step for ssd1200); None uses the feature
            sizes (fk = f).
        variant: network variant, which sets the feature-map sizes.
        mask: 6 values of 0/1; maps with 0 contribute no boxes.

    Returns:
        Tensor[B, 4] fp32 in (cx, cy, w, h) format, normalized to [0, 1].
    """
    fsizes = map_sizes(image_size, variant)
    if steps is not None:
        check_steps(image_size, steps, variant)
    scales = [s / image_size for s in box_scales_px(dboxes_scale)]
    mask = list(mask) if mask is not None else [1] * len(fsizes)
    parts = []
    for k, f in enumerate(fsizes):
        if not mask[k]:
            continue
        fk = CELLS_PER_SIDE[variant](image_size, steps[k]) if steps is not None else f
        sk1, sk2 = scales[k], scales[k + 1]
        sk3 = math.sqrt(sk1 * sk2)
        shapes = [(sk1, sk1), (sk3, sk3)]
        for a in ASPECT_RATIOS[k]:
            r = math.sqrt(a)
            shapes += [(sk1 * r, sk1 / r), (sk1 / r, sk1 * r)]
        assert len(shapes) == BOXES_PER_LOCATION[k]
        centres = (torch.arange(f, dtype=torch.float64) + 0.5) / fk
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")  # row i -> cy, column j -> cx
        for w, h in shapes:
            parts.append(torch.stack([cx.reshape(-1), cy.reshape(-1),
                                      torch.full((f * f,), w, dtype=torch.float64),
                                      torch.full((f * f,), h, dtype=torch.float64)], 1))
    return torch.cat(parts).clamp_(0, 1).float()


def boxes_per_map(image_size: int, variant: str = "training") -> list[int]:
    """Number of default boxes each map contributes: nd_k * f_k^2."""
    return [nd * f * f for nd, f in zip(BOXES_PER_LOCATION, map_sizes(image_size, variant))]
