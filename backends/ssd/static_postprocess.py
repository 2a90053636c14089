"""Post-processing with fixed shapes: no host sync before the final per-image split (the CUDA form).

Same contract and same detections as backends/ssd/postprocess.py (MLPerf SSD,
SPEC.md section 3.6): per (image, class 1..C-1) the ``max_per_class`` best
boxes scoring above ``score_threshold``, greedy NMS at ``nms_iou``, then the
``max_detections`` best per image; boxes ``xyxy``, normalized; fp32 maths.

On a GPU every data-dependent shape (``nonzero``, boolean indexing, ``unique``,
``.item()``, ``torch.equal``) makes the host wait for the device. This form
has none until the end: every (image, class) group gets a fixed
``k = min(max_per_class, B)`` slots chosen by ``topk``, NMS runs a fixed
number of steps, and the best detections of each image come from one more
``topk``. Host syncs per batch: one, reading the per-image counts (the caller's
copy of the detections to the host is the other). Ties are broken exactly as
the CPU form's stable sorts do: ``topk`` runs on a unique int64 key whose high
32 bits are the fp32 score's bits (a positive float's bits order like the
float) and whose low bits order by position. NMS is greedy, exactly: box ``i``
of a group (in score order) is decided at step ``i`` from the boxes kept before
it; the overlaps of a block of rows are computed once per block with the same
fp32 operations as the CPU form (:func:`backends.ssd.overlap.pair_overlap`),
and the block's height is chosen so that its temporaries stay within
``block_bytes`` (at least one row: [G, k] pairs), as are the top-k keys
(at least one (image, class) row of B boxes): never the dense [G, k, k]
overlap (410 MB in fp32 for 32 images x 80 classes x 200 boxes).
The cost is ``k`` small sequential steps per batch, no host round trip.
"""
from __future__ import annotations

import torch

from .overlap import BLOCK_BYTES, PAIR_BYTES, pair_overlap

_KEY_BYTES = 16             # per candidate: its int64 key and the masks beside it


def _score_keys(scores: torch.Tensor, passing: torch.Tensor) -> torch.Tensor:
    """int64 keys that order like (score descending, position ascending) along the last dim; -1 where not passing.

    ``scores`` fp32 Tensor[..., L] (positive where ``passing``), ``passing`` bool Tensor[..., L].
    """
    n = scores.shape[-1]
    keys = scores.view(torch.int32).to(torch.int64).bitwise_left_shift_(32)
    keys.bitwise_or_(torch.arange(n - 1, -1, -1, device=scores.device))
    return keys.masked_fill_(~passing, -1)


def _top_per_class(fg: torch.Tensor, threshold: float, k: int, chunk_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (image, class) the ``k`` best boxes of ``fg`` (fp32 Tensor[N, C-1, B]): (keys, box indices),
    Tensor[N, C-1, k] each. The keys are built for a chunk of (image, class) rows at a time, within
    ``chunk_bytes`` (at least one row)."""
    n, c1, b = fg.shape
    rows = max(1, chunk_bytes // max(1, b * _KEY_BYTES))
    images, classes = (max(1, rows // c1), c1) if rows >= c1 else (1, rows)
    keys, boxes = [], []
    for i in range(0, n, images):
        tops = []
        for j in range(0, c1, classes):
            part = fg[i:i + images, j:j + classes]
            tops.append(_score_keys(part, part > threshold).topk(k, dim=2))
        keys.append(torch.cat([t.values for t in tops], 1))
        boxes.append(torch.cat([t.indices for t in tops], 1))
    return torch.cat(keys), torch.cat(boxes)


def greedy_nms(boxes: torch.Tensor, valid: torch.Tensor, iou_threshold: float,
               block_bytes: int | None = None) -> torch.Tensor:
    """Greedy NMS inside each group, all groups at once, without a host sync.

    Args:
        boxes: Tensor[G, k, 4] in (x1, y1, x2, y2) format, fp32, each group sorted by decreasing score.
        valid: Tensor[G, k] bool, False on padding.
        iou_threshold: a box is suppressed by a better kept box of its group when IoU > threshold.
        block_bytes: bound on the temporaries of one block of rows (default ``BLOCK_BYTES``).

    Returns:
        Tensor[G, k] bool, the boxes greedy NMS keeps.
    """
    g, k = valid.shape
    block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes
    keep = []
    suppressed = torch.zeros_like(valid)
    rows = max(1, min(k, block_bytes // max(1, g * k * PAIR_BYTES)))
    for start in range(0, k, rows):
        overlaps = pair_overlap(boxes[:, start:start + rows], boxes, iou_threshold)      # [G, rows, k]
        for i in range(start, min(k, start + rows)):
            kept = valid[:, i] > suppressed[:, i]                 # valid and not suppressed (bools: True > False)
            suppressed |= overlaps[:, i - start] & kept[:, None]
            keep.append(kept)
    return torch.stack(keep, 1) if keep else torch.zeros_like(valid)


def select(boxes: torch.Tensor, scores: torch.Tensor, score_threshold: float, nms_iou: float,
           max_per_class: int, max_detections: int, block_bytes: int | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The detections of a batch, padded: (dets fp32 Tensor[N, M, 6], counts int64 Tensor[N]); no host sync.

    Row j < counts[i] of dets[i] is image i's j-th detection (x1, y1, x2, y2, score, label), by
    decreasing score; the rest is padding. Arguments as :func:`backends.ssd.postprocess.postprocess`.
    """
    n, c, b = scores.shape
    c1, k = c - 1, min(max_per_class, b)
    block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes
    fg = scores.float()[:, 1:, :]                                               # [N, C-1, B]
    keys, box = _top_per_class(fg, score_threshold, k, block_bytes)            # [N, C-1, k]
    valid = keys >= 0
    cand_scores = torch.gather(fg, 2, box)
    cand_boxes = torch.gather(boxes.float(), 1, box.reshape(n, c1 * k, 1).expand(-1, -1, 4))  # [N, C-1 * k, 4]
    kept = greedy_nms(cand_boxes.reshape(n * c1, k, 4), valid.reshape(n * c1, k), nms_iou, block_bytes)
    kept = kept.reshape(n, c1 * k)
    flat_scores = cand_scores.reshape(n, c1 * k)
    m = min(max_detections, c1 * k)
    best = _score_keys(flat_scores, kept).topk(m, dim=1)                       # [N, M]
    slot = best.indices
    labels = torch.div(slot, k, rounding_mode="floor").add_(1).float()
    dets = torch.cat([torch.gather(cand_boxes, 1, slot[..., None].expand(-1, -1, 4)),
                      torch.gather(flat_scores, 1, slot)[..., None], labels[..., None]], dim=2)
    return dets, (best.values >= 0).sum(1)


def split(dets: torch.Tensor, counts: torch.Tensor) -> list[torch.Tensor]:
    """Per image its first ``counts[i]`` rows of ``dets`` (Tensor[N, M, 6]): the one host sync."""
    return [d[:m] for d, m in zip(dets, counts.tolist())]
