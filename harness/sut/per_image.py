"""What the harness puts around a backend: per-image execution for batch-invariant outputs, and clear
out-of-memory errors (harness/sut/out_of_memory.py).

Batch invariance (TEST01 compares a sample's response bytes across runs): on a
CPU the convolution kernels pick their blocking from the batch size, so the
same image gives outputs that differ in the last bits (about 1e-7) between a
batch of 1 and a batch of 3, and a score or box can then differ in its bytes.
With ``per_image`` the wrapped backend runs each image of a batch on its own,
in the same batch-of-one shapes every time, so an image's bytes are identical
whether it ran alone, in a batch of 8 or of 64, first or last. Batching gains
little on a CPU; the cost is measured in the project README. It is the default
on the CPU (``build_backend``); on CUDA batching matters and it is off.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from backends.base import is_out_of_memory, predict_one_by_one
from harness.sut.out_of_memory import DeviceMemoryError


class GuardedBackend:
    """The backend interface of ``backends/base.py`` around ``inner``; other attributes pass through."""

    def __init__(self, inner: Any, per_image: bool = False, hint: str = "lower the batch size") -> None:
        self.inner = inner
        self.per_image = per_image
        self.hint = hint
        self._oom_batches = 0
        self._children: list[GuardedBackend] = []   # guards made for the inner backend's other workers

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def with_hint(self, hint: str) -> "GuardedBackend":
        """The same guard around the same backend, naming another setting in its out-of-memory message."""
        return GuardedBackend(self.inner, self.per_image, hint)

    @property
    def oom_batches(self) -> int:
        """Batches that ran out of memory, over this guard and the guards of the other workers."""
        return self._oom_batches + sum(c.oom_batches for c in self._children)

    def workers(self) -> list["GuardedBackend"]:
        """One guarded backend per worker of ``inner``: itself for ``inner`` (or when it has no workers).

        ``inner`` need not be one of its own workers (a backend of remote workers is none of them).
        """
        inner = getattr(self.inner, "workers", None)
        if inner is None:
            return [self]
        workers = list(inner())
        self._children = [GuardedBackend(w, self.per_image, self.hint) for w in workers if w is not self.inner]
        return [self, *self._children] if any(w is self.inner for w in workers) else list(self._children)

    def predict(self, images: Mapping[int, torch.Tensor], image_hw: torch.Tensor) -> list[torch.Tensor]:
        """As the inner backend's ``predict``: {S: uint8 Tensor[B, 3, S, S]}, Tensor[B, 2] -> B x Tensor[K, 6]."""
        batch = int(image_hw.shape[0])
        try:
            if not self.per_image or batch == 1:
                return self.inner.predict(images, image_hw)
            return predict_one_by_one(self.inner, images, image_hw)
        except Exception as e:
            if isinstance(e, DeviceMemoryError) or not is_out_of_memory(e):
                raise
            self._oom_batches += 1
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise DeviceMemoryError(f"device out of memory on a batch of {batch} image(s) at sizes "
                                    f"{sorted(images)}: {self.hint}") from e
