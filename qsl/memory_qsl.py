"""A query sample library held in memory, for harness-capacity runs and tests.

Same surface as ``qsl.coco_qsl.CocoQSL`` (``total_count``, ``perf_count``,
``load``, ``unload``, ``get_batch``, ``image_hw``), but its images are
generated, not read: sample ``i`` is an image filled with the value
``i % 256`` (so a test backend can tell samples apart) and its original
size is ``image_hw[i]``. ``get_batch`` raises for an index that is not loaded,
like a real QSL would fail on an unloaded sample, and gathers rows as
``CocoQSL`` does (``np.take`` into a fresh tensor, or the caller's), so benchmarks that use it
pay a real QSL's gather: torch's ``index_select`` took 8-18 ms per 300+600
sample on the loaded 2-core machine, against well under 1 ms this way.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
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

    def get_batch(self, indices: Sequence[int], out: Mapping[int, torch.Tensor] | None = None
                  ) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """({S: uint8 Tensor[B, 3, S, S]}, int64 Tensor[B, 2] original (height, width)); ``out`` as CocoQSL's."""
        missing = [i for i in indices if i not in self.loaded]
        if missing:
            raise KeyError(f"samples {missing[:5]} are not loaded")
        rows = np.asarray(indices, dtype=np.int64)
        images = {}
        for s, t in self._images.items():
            images[s] = out[s][:len(rows)] if out is not None else torch.empty((len(rows), 3, s, s), dtype=torch.uint8)
            np.take(t.numpy(), rows, axis=0, out=images[s].numpy())
        return images, self.image_hw[torch.from_numpy(rows)]
