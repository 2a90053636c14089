"""The QSL as Ray workers see it: each loaded set in the object store once, batches as rows of it.

LoadGen loads a small set of samples (the performance sample count; in accuracy mode one such set
after another) and then issues them over and over. :class:`SharedSamples` wraps the run's QSL:
``load`` loads it as usual, gathers the set once, puts it into Ray's object store and has every
worker take it (``publish``) before ``load`` returns, that is before LoadGen times anything; Ray
brings it to each node once, and the actors of a node share that copy. ``get_batch`` then returns
no pixels but the batch's rows of the set (:class:`SampleRows`) and the images' sizes, and a batch
sends only its rows: tens of bytes for a batch of 8, against 10.8 MB of images at 300+600.

Assumptions: LoadGen calls ``load`` and ``unload`` from one thread and never while a batch of the
previous set is still computing (it loads a set only once every query of the previous one has
completed); ``get_batch`` is called from the pipeline's loader threads.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

import numpy as np
import torch


class SampleRows(dict):
    """{S: int64 Tensor[B]}: the rows of sample set ``version`` for every input size (the same rows each).

    It has the shape of a batch of images, so the pipeline slices it as one (``backends.base.slice_batch``
    keeps its ``version``); only a Ray worker holding that set can compute it.
    """

    version: int = 0

    @property
    def rows(self) -> torch.Tensor:
        return next(iter(self.values()))


class SharedSamples:
    """``qsl`` (a QSL of ``qsl/``) whose loaded sets the Ray workers hold; ``publish(version, ref)`` hands
    a set put into the object store to every worker and returns once they hold it."""

    def __init__(self, qsl: Any, publish: Callable[[int, Any], None]) -> None:
        self.qsl = qsl
        self.sizes = tuple(qsl.sizes)
        self.total_count = qsl.total_count
        self.perf_count = qsl.perf_count
        self.version = 0
        self._publish = publish
        self._rows = np.full(self.total_count, -1, dtype=np.int64)    # sample index -> row of the loaded set
        self._hw = torch.zeros(0, 2, dtype=torch.int64)               # the set's (height, width) per row
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.qsl, name)

    def load(self, indices: Sequence[int]) -> None:
        """LoadGen's load callback: load ``indices`` into the QSL, then into every worker (one object)."""
        import ray
        self.qsl.load(indices)
        idx = np.unique(np.asarray(indices, dtype=np.int64))
        images, hw = self.qsl.get_batch(idx.tolist())
        version = self.version + 1
        ref = ray.put(({s: t.numpy() for s, t in images.items()}, hw.numpy()))
        del images
        self._publish(version, ref)
        rows = np.full(self.total_count, -1, dtype=np.int64)
        rows[idx] = np.arange(len(idx))
        with self._lock:
            self._rows, self._hw, self.version = rows, hw.clone(), version

    def unload(self, indices: Sequence[int]) -> None:
        """LoadGen's unload callback: the QSL drops the set (the workers hold theirs until the next one)."""
        self.qsl.unload(indices)
        with self._lock:
            self._rows = np.full(self.total_count, -1, dtype=np.int64)

    def get_batch(self, indices: Sequence[int]) -> tuple[SampleRows, torch.Tensor]:
        """(SampleRows of ``indices``, int64 Tensor[B, 2] original (height, width)); KeyError for a sample not loaded."""
        with self._lock:
            rows, hw, version = self._rows, self._hw, self.version
        picked = rows[np.asarray(indices, dtype=np.int64)]
        if (picked < 0).any():
            missing = [int(i) for i, r in zip(indices, picked) if r < 0]
            raise KeyError(f"samples {missing[:5]} are not loaded")
        r = torch.from_numpy(picked)
        batch = SampleRows({s: r for s in self.sizes})
        batch.version = version
        return batch, hw[r]
