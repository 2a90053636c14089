"""The Query Sample Library: LoadGen's view of the preprocessed COCO images.

LoadGen calls ``load(indices)`` before issuing queries and ``unload(indices)``
after; in accuracy mode it does this one ``perf_count``-sized set at a time,
so RAM is bounded by ``perf_count``, not the data set. ``load`` copies exactly
the requested rows from the cache's memory maps into ONE contiguous in-RAM
uint8 tensor per size (pinned on request, for fast host-to-device copies); a
second ``load`` replaces the set. ``get_batch`` is then a pure index
operation: a precomputed qsl_idx -> slot table and one gather per size into a
fresh tensor (pinned on request). The gather is ``np.take`` on the tensor's
memory, a single-threaded row memcpy: torch's ``index_select`` is OpenMP
parallel and, measured on a busy 2-core machine, took 60-120 ms instead of
0.5 ms for 8 rows of 600x600 when the cores were shared with the model.

Assumptions: a sample index is the ``qsl_idx`` (position in the annotation
file's ``images`` list). This module does not import ``mlperf_loadgen``; the
harness wires it up with
``lg.ConstructQSL(qsl.total_count, qsl.perf_count, qsl.load, qsl.unload)``.
"""
from __future__ import annotations

import threading
from typing import Mapping, Sequence

import numpy as np
import torch

from qsl.cache.reader import Cache

DEFAULT_PERF_COUNT = 64  # MLPerf performance_sample_count for SSD-ResNet34


class QSLError(RuntimeError):
    """A sample was asked for that is out of range or not loaded; the message says which."""


class CocoQSL:
    """Preloads cache rows for LoadGen and serves batches from RAM."""

    def __init__(self, cache: Cache, perf_count: int | None = None, pin_memory: bool = False) -> None:
        self.cache = cache
        self.total_count = cache.num_images
        self.perf_count = min(self.total_count, DEFAULT_PERF_COUNT) if perf_count is None else int(perf_count)
        if not 1 <= self.perf_count <= self.total_count:
            raise QSLError(f"perf_count must be in 1..{self.total_count} (images in the cache), "
                           f"got {self.perf_count}")
        self.pin_memory = pin_memory
        self.sizes: tuple[int, ...] = tuple(cache.arrays)
        self.image_ids = torch.from_numpy(cache.image_ids.copy())  # int64 [N]
        self.image_hw = torch.from_numpy(cache.image_hw.copy())    # int64 [N, 2] (height, width)
        self._slot = torch.full((self.total_count,), -1, dtype=torch.int64)  # qsl_idx -> row of the loaded set
        self._loaded: dict[int, torch.Tensor] = {}   # {S: uint8 [M, 3, S, S]}
        self._loaded_idx = torch.empty(0, dtype=torch.int64)
        self._lock = threading.Lock()

    def _as_index(self, indices: Sequence[int]) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64).reshape(-1))
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.total_count):
            bad = idx[(idx < 0) | (idx >= self.total_count)][0].item()
            raise QSLError(f"sample index {bad} is out of range: the cache holds {self.total_count} images")
        return idx

    def load(self, indices: Sequence[int]) -> None:
        """LoadGen's load callback: hold exactly these samples in RAM (replaces any previous set)."""
        idx = torch.unique(self._as_index(indices), sorted=True)
        rows = idx.numpy()
        loaded: dict[int, torch.Tensor] = {}
        for size, arr in self.cache.arrays.items():
            out = torch.empty((len(rows), 3, size, size), dtype=torch.uint8, pin_memory=self.pin_memory)
            # Sorted fancy indexing reads the memory map front to back, straight into the tensor's storage.
            np.take(arr, rows, axis=0, out=out.numpy(), mode="clip")  # indices checked above
            loaded[size] = out
        slot = torch.full((self.total_count,), -1, dtype=torch.int64)
        slot[idx] = torch.arange(len(rows), dtype=torch.int64)
        with self._lock:
            self._loaded, self._slot, self._loaded_idx = loaded, slot, idx

    def unload(self, indices: Sequence[int]) -> None:
        """LoadGen's unload callback: drop the loaded set (LoadGen always unloads the set it loaded)."""
        with self._lock:
            self._loaded = {}
            self._slot = torch.full((self.total_count,), -1, dtype=torch.int64)
            self._loaded_idx = torch.empty(0, dtype=torch.int64)

    @property
    def loaded_indices(self) -> list[int]:
        return self._loaded_idx.tolist()

    @property
    def loaded_bytes(self) -> int:
        """Bytes of image tensors currently held in RAM."""
        return sum(t.numel() * t.element_size() for t in self._loaded.values())

    def get_batch(self, indices: Sequence[int], out: Mapping[int, torch.Tensor] | None = None
                  ) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """Images and original sizes of loaded samples, in the order asked.

        ``out``: {S: uint8 Tensor[>= B, 3, S, S]} to gather into (the first B rows, returned as views)
        instead of fresh tensors; a caller that reuses them saves the allocation, which for a batch over
        32 MB is a fresh memory map whose page faults cost more than the copy.

        Returns:
            ({S: uint8 Tensor[B, 3, S, S]} for every cached size,
             int64 Tensor[B, 2] of original (height, width) in pixels).

        Raises:
            QSLError: an index is out of range or not in the loaded set.
        """
        idx = self._as_index(indices)
        with self._lock:
            loaded, slot_table = self._loaded, self._slot
        slots = slot_table[idx]
        if idx.numel() and bool((slots < 0).any()):
            missing = idx[slots < 0].tolist()
            raise QSLError(f"sample(s) {missing[:8]}{' ...' if len(missing) > 8 else ''} are not loaded: LoadGen "
                           f"must call load() with them first (loaded now: {int(self._loaded_idx.numel())} samples)")
        rows = slots.numpy()
        images = {}
        for s in self.sizes:
            dst = out[s][:len(rows)] if out is not None else \
                torch.empty((len(rows), 3, s, s), dtype=torch.uint8, pin_memory=self.pin_memory)
            if len(rows):
                np.take(loaded[s].numpy(), rows, axis=0, out=dst.numpy(), mode="clip")  # slots checked above
            images[s] = dst
        return images, self.image_hw[idx]
