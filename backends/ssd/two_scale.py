"""The seed's two-scale SSD inference: two input sizes, masks, area filter, one NMS.

Method (SPEC.md section 3): run the model on the image resized to S0 and to
S1 (once when S0 == S1); decode each pass with its own default boxes; map k
contributes at S0 only when ``small_mask[k]`` is 1 and at S1 only when
``large_mask[k]`` is 1 (masked maps cost no head compute); with
``use_filter`` the S0 pass keeps boxes whose area in ORIGINAL image pixels is
above 96^2 and the S1 pass those below 96^2 (equal is dropped by both, class
ignored, area of the clipped box); then S0 boxes and S1 boxes are
concatenated and go through one class-wise NMS.

When S0 == S1 the single pass uses the union of both masks, and each box is
kept when it would have been kept by either of the seed's two identical
passes: (map in small_mask and, with the filter, area > 96^2) or (map in
large_mask and, with the filter, area < 96^2). Running it twice would only
add exact duplicates, which NMS removes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch.func import functional_call

from backends.model_config import ModelConfig

from backends.ssd.boxes import box_area_px, class_scores, decode_boxes
from backends.ssd.default_boxes import (
    BOXES_PER_LOCATION,
    GeometryError,
    check_steps,
    default_boxes,
    map_sizes,
)
from backends.ssd.postprocess import postprocess

FILTER_AREA_PX = 96 * 96  # COCO's large-object threshold


@dataclass
class ScalePass:
    """One model run: its input size, the maps it computes and, per box, which seed pass it stands for."""

    size: int
    mask: tuple[int, ...]          # maps computed in this run (union of the masks it serves)
    dboxes: torch.Tensor           # Tensor[B, 4] cxcywh, normalized, for the maps in ``mask``
    from_small: torch.Tensor       # Tensor[B] bool: box belongs to a map of the S0 (small) pass
    from_large: torch.Tensor       # Tensor[B] bool: box belongs to a map of the S1 (large) pass

    @property
    def keeps_all(self) -> bool:
        """Every box is kept when there is no area filter (known at build time, no device sync)."""
        return self._keeps_all

    def __post_init__(self) -> None:
        self._keeps_all = bool((self.from_small | self.from_large).all())


def _map_flags(size: int, variant: str, run_mask: Sequence[int], flag_mask: Sequence[int]) -> torch.Tensor:
    """Tensor[B] bool over the boxes of ``run_mask``'s maps: True where ``flag_mask`` selects the map."""
    parts = [torch.full((nd * f * f,), bool(flag), dtype=torch.bool)
             for nd, f, used, flag in zip(BOXES_PER_LOCATION, map_sizes(size, variant), run_mask, flag_mask)
             if used]
    return torch.cat(parts)


def model_output_boxes(model: torch.nn.Module, size: int, mask: Sequence[int]) -> int:
    """Number of boxes the model really outputs for a square input of ``size`` with ``mask``.

    Shapes are propagated on the meta device, so this costs no compute at any size.
    """
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    meta = {k: torch.empty_like(v, device="meta") for k, v in tensors.items()}
    dtype = next(model.parameters()).dtype   # the first conv sets the input dtype
    x = torch.empty(1, 3, size, size, device="meta", dtype=dtype)
    with torch.no_grad():
        locs, confs = functional_call(model, meta, (x,), {"mask": list(mask)})
    if locs.shape[2] != confs.shape[2]:
        raise GeometryError(f"model outputs {locs.shape[2]} box offsets but {confs.shape[2]} box scores")
    return int(locs.shape[2])


def build_passes(cfg: ModelConfig) -> list[ScalePass]:
    """The model runs ``cfg`` asks for, with their default boxes (on the CPU)."""
    s0, s1 = cfg.image_size
    small, large = tuple(cfg.small_mask), tuple(cfg.large_mask)
    steps = cfg.dboxes_steps
    if s0 == s1:
        plan = [(s0, tuple(int(a or b) for a, b in zip(small, large)), small, large)]
    else:
        none = (0,) * len(small)
        plan = [(s0, small, small, none), (s1, large, none, large)]
    if steps is not None:   # checked here too, to say when two sizes are what no list of steps can fit
        check_steps(s0, steps, cfg.variant, other_size=s1)
        check_steps(s1, steps, cfg.variant, other_size=s0)
    passes = []
    for size, run_mask, small_sel, large_sel in plan:
        dboxes = default_boxes(size, cfg.dboxes_scale, steps, cfg.variant, mask=run_mask)
        passes.append(ScalePass(size, run_mask, dboxes,
                                _map_flags(size, cfg.variant, run_mask, small_sel),
                                _map_flags(size, cfg.variant, run_mask, large_sel)))
    return passes


class TwoScaleDetector:
    """Runs the model at the configured sizes and turns its outputs into detections.

    The geometry is checked once, here: for every pass the number of default
    boxes must equal the number of boxes the model outputs, else GeometryError.
    """

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig) -> None:
        self.model = model
        self.cfg = cfg
        self.passes = build_passes(cfg)
        for p in self.passes:
            real = model_output_boxes(model, p.size, p.mask)
            if real != p.dboxes.shape[0]:
                raise GeometryError(
                    f"at image size {p.size} with maps {list(p.mask)} the {cfg.variant} model outputs {real} "
                    f"boxes but the default boxes number {p.dboxes.shape[0]} (feature sizes "
                    f"{map_sizes(p.size, cfg.variant)}); check model.variant, image_size and dboxes_steps")

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(p.size for p in self.passes)

    def to(self, device: torch.device | str) -> "TwoScaleDetector":
        """Move the default boxes and per-box flags to ``device`` (the model is moved by its owner)."""
        for p in self.passes:
            p.dboxes, p.from_small, p.from_large = (t.to(device) for t in (p.dboxes, p.from_small, p.from_large))
        return self

    def merge(self, outputs: Sequence[tuple[torch.Tensor, torch.Tensor]],
              image_hw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode each pass's raw outputs and concatenate them, masks and filter applied.

        Args:
            outputs: per pass, in pass order, the model's (locs Tensor[N, 4, B_p], confs Tensor[N, C, B_p]).
            image_hw: Tensor[N, 2], original (height, width) in pixels.

        Returns:
            boxes Tensor[N, B, 4] (x1, y1, x2, y2) normalized, clipped; scores Tensor[N, C, B] fp32,
            zero for every box the filter drops; B = sum of B_p, S0 boxes first.
        """
        all_boxes, all_scores = [], []
        for p, (locs, confs) in zip(self.passes, outputs):
            boxes = decode_boxes(locs, p.dboxes)
            scores = class_scores(confs)
            if not self.cfg.use_filter and p.keeps_all:
                all_boxes.append(boxes)
                all_scores.append(scores)
                continue
            keep_small, keep_large = p.from_small[None, :], p.from_large[None, :]
            if self.cfg.use_filter:
                area = box_area_px(boxes, image_hw)
                keep_small = keep_small & (area > FILTER_AREA_PX)
                keep_large = keep_large & (area < FILTER_AREA_PX)
            keep = keep_small | keep_large                       # [N or 1, B_p]
            all_boxes.append(boxes)
            all_scores.append(scores * keep[:, None, :].to(scores.dtype))
        return torch.cat(all_boxes, 1), torch.cat(all_scores, 2)

    def run_model(self, inputs: Mapping[int, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Raw model outputs per pass; ``inputs`` = {S: normalized Tensor[N, 3, S, S]}."""
        missing = [p.size for p in self.passes if p.size not in inputs]
        if missing:
            raise ValueError(f"no input given for image size(s) {missing}; got sizes {sorted(inputs)}")
        return [self.model(inputs[p.size], p.mask) for p in self.passes]

    def detect(self, inputs: Mapping[int, torch.Tensor], image_hw: torch.Tensor) -> list[torch.Tensor]:
        """Detections for a batch.

        Args:
            inputs: {S: Tensor[N, 3, S, S]} normalized, in the model's dtype and device, for every S in ``sizes``.
            image_hw: Tensor[N, 2], original (height, width) in pixels.

        Returns:
            One fp32 Tensor[K, 6] per image on the model's device: (x1, y1, x2, y2, score, label),
            normalized xyxy, label 1..C-1, sorted by decreasing score.
        """
        boxes, scores = self.merge(self.run_model(inputs), image_hw)
        c = self.cfg
        return postprocess(boxes, scores, c.score_threshold, c.nms_iou, c.max_per_class, c.max_detections)
