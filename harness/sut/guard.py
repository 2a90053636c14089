"""What the harness puts around a backend: batch-invariant outputs and clear out-of-memory errors.

Batch invariance (TEST01 compares a sample's response bytes across runs): on a
CPU the convolution kernels pick their blocking from the batch size, so the
same image gives outputs that differ in the last bits (about 1e-7) between a
batch of 1 and a batch of 3, and a score or box can then differ in its bytes.
With ``per_image`` the wrapped backend runs each image of a batch on its own,
in the same batch-of-one shapes every time, so an image's bytes are identical
whether it ran alone, in a batch of 8 or of 64, first or last. Batching gains
little on a CPU; the cost is measured in the project README. It is the default
on the CPU (``build_backend``); on CUDA batching matters and it is off.

Out of memory: ``torch.cuda.OutOfMemoryError`` (or any "out of memory"
RuntimeError) from ``predict`` becomes :class:`DeviceMemoryError`, whose
message names the batch size that failed and the setting that lowers it. The
pipeline then retries the batch one image at a time, so the run goes on;
``oom_batches`` counts the batches that failed this way for the run summary.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch

from backends.base import slice_batch

log = logging.getLogger("harness")


class DeviceMemoryError(RuntimeError):
    """The device ran out of memory on a batch; the message says which setting to lower."""


def is_out_of_memory(e: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(e, oom) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def batch_hint(scenario: str, batch_size: int, server_max_batch: int) -> str:
    """Which setting lowers the batch of ``scenario``, with its current value."""
    if scenario == "Offline":
        return f"lower --batch-size (now {batch_size})"
    if scenario == "Server":
        return f"lower --server-max-batch (now {server_max_batch})"
    if scenario == "MultiStream":
        return ("a MultiStream query (its samples_per_query, fixed by the rules) runs as one batch: use a "
                "lower precision, smaller --image-size or a device with more memory")
    return "even one image does not fit: use a lower precision, smaller --image-size or a device with more memory"


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
            out: list[torch.Tensor] = []
            for i in range(batch):   # each slice keeps a staged batch's copy event (slice_batch)
                out.extend(self.inner.predict(*slice_batch(images, image_hw, i, i + 1)))
            return out
        except Exception as e:
            if isinstance(e, DeviceMemoryError) or not is_out_of_memory(e):
                raise
            self._oom_batches += 1
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise DeviceMemoryError(f"device out of memory on a batch of {batch} image(s) at sizes "
                                    f"{sorted(images)}: {self.hint}") from e
