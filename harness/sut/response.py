"""The LoadGen response record: the one conversion from detections to bytes.

Assumption (the MLPerf COCO accuracy contract): each detection is 7 float32
values ``[qsl_idx, ymin, xmin, ymax, xmax, score, label]``: note y first. The
box is normalized to [0, 1] of the original image and ``label`` is the class
index 1..num_classes-1 (the accuracy script maps it to a COCO category id).
``qsl_idx`` is the position of the image in the annotation file's ``images``
list. An image with no detections is an empty record (0 floats); it still
counts in the evaluation because LoadGen logs its ``qsl_idx``.

The record is a function of the sample's detections only, so the bytes logged
for a sample do not depend on batch size or arrival order (TEST01).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

RECORD_FLOATS = 7
RECORD_BYTES = RECORD_FLOATS * 4  # float32


def to_record(detections: torch.Tensor, qsl_idx: int) -> np.ndarray:
    """Convert one image's detections to its response record.

    Args:
        detections: Tensor[K, 6] ``(x1, y1, x2, y2, score, label)``, box in xyxy
            format normalized to [0, 1], any float dtype, any device.
        qsl_idx: position of the image in the annotation file's ``images`` list.

    Returns:
        float32 array [K, 7]: ``[qsl_idx, y1, x1, y2, x2, score, label]`` per row
        (C-contiguous, K may be 0).
    """
    if detections.dim() != 2 or detections.shape[1] != 6:
        raise ValueError(f"detections must be Tensor[K, 6] (x1, y1, x2, y2, score, label), "
                         f"got shape {tuple(detections.shape)}")
    det = detections.detach().to("cpu", torch.float32).numpy()
    out = np.empty((det.shape[0], RECORD_FLOATS), dtype=np.float32)
    out[:, 0] = qsl_idx
    out[:, 1] = det[:, 1]  # ymin
    out[:, 2] = det[:, 0]  # xmin
    out[:, 3] = det[:, 3]  # ymax
    out[:, 4] = det[:, 2]  # xmax
    out[:, 5] = det[:, 4]  # score
    out[:, 6] = det[:, 5]  # label
    return out


def pack_records(records: Sequence[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Lay several records end to end in one buffer, for one QuerySamplesComplete call.

    Returns the float32 buffer [sum K_i, 7] and, per record, its (byte offset, byte
    length) in that buffer. The caller keeps the buffer alive while LoadGen copies it.
    """
    counts = [r.shape[0] for r in records]
    total = sum(counts)
    buf = np.empty((total, RECORD_FLOATS), dtype=np.float32)
    spans = []
    row = 0
    for rec, k in zip(records, counts):
        if k:
            buf[row:row + k] = rec
        spans.append((row * RECORD_BYTES, k * RECORD_BYTES))
        row += k
    return buf, spans
