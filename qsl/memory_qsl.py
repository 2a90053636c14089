"""A query sample library held in memory, for harness-capacity runs and tests.

Same surface as ``qsl.coco_qsl.CocoQSL`` (``total_count``, ``perf_count``,
``load``, ``unload``, ``get_batch``, ``image_hw``), but its images are
generated, not read: sample ``i`` is an image filled with the value
``i % 256`` (so a test backend can tell samples apart) and its original
size is ``image_hw[i]``. ``get_batch`` raises for an index that is not loaded,
like a real QSL would fail on an unloaded sample.
"""
from __future__ import annotations

from typing import Sequence

import torch


class MemoryQSL:
    def __init__(self, total_count: int, sizes: Sequence[int] = (32,), perf_count: int | None = None,
                 image_hw: torch.Tensor | None = None) -> None:
        """``image_hw``: int Tensor[N, 2] original (height, width); default 480x640 for all."""
        if total_count < 1:
            raise ValueError(f"total_count must be at least 1, got {total_count}")
        self.total_count = total_count
        self.perf_count = min(perf_count or total_count, total_count)
        self.sizes = tuple(sizes)
        self.image_hw = image_hw if image_hw is not None else torch.tensor([[480, 640]] * total_count)
        self._images: dict[int, torch.Tensor] = {
            s: torch.arange(total_count, dtype=torch.int64).remainder(256).to(torch.uint8)
            .view(-1, 1, 1, 1).expand(total_count, 3, s, s).contiguous() for s in self.sizes}
        self.loaded: set[int] = set()
        self.load_calls = 0

    def load(self, indices: Sequence[int]) -> None:
        self.load_calls += 1
        self.loaded.update(int(i) for i in indices)

    def unload(self, indices: Sequence[int]) -> None:
        self.loaded.difference_update(int(i) for i in indices)

    def get_batch(self, indices: Sequence[int]) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """({S: uint8 Tensor[B, 3, S, S]}, int64 Tensor[B, 2] original (height, width))."""
        missing = [i for i in indices if i not in self.loaded]
        if missing:
            raise KeyError(f"samples {missing[:5]} are not loaded")
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        return {s: t.index_select(0, idx) for s, t in self._images.items()}, self.image_hw.index_select(0, idx)
