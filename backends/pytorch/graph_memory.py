"""How much device memory a worker's CUDA graphs hold, estimated before any is captured.

A captured graph keeps, for as long as it exists, the memory its forward pass
used: the activations (freed and reused within the graph, but never returned)
and its outputs (the graph's static outputs). The estimate follows the network's
real allocations: one forward of one image per pass runs on the meta device (no
memory, no compute) under a dispatch mode that tracks every tensor storage from
creation to release, giving per image the peak bytes live and the output bytes.
Every activation has the batch as its first dimension, so both scale with it.

Per worker (backends/pytorch/cuda_graphs.py: one pool, one capture stream, one input
buffer per input size), for the captured batch sizes ``Bs`` and passes ``p``:

    inputs    = sum_p  max(Bs) * input_p                  (one buffer per input size)
    outputs   = sum_b sum_p  b * out_p                    (every graph's outputs stay live)
    transient = max_b max_p  b * (peak_p - out_p)         (one graph's scratch at a time, reused)

With a new stream per capture (the earlier scheme) nothing is reused:
``sum_b sum_p b * (peak_p + input_p)``, kept here as ``unshared`` for comparison.
Not counted: cuDNN workspaces, allocator rounding and fragmentation, the
weights (loaded before), and eager post-processing (decode, softmax, NMS).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from backends.model_config import ModelConfig
from ground.errors import ConfigError

GIB = 2 ** 30


class GraphMemoryError(ConfigError):
    """The CUDA graphs of the requested batch sizes cannot fit the device; the message gives the figures."""


class _LiveBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages created inside the mode, from creation to release; keeps the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, int] = {}   # storage -> live tensors on it

    def _release(self, key: int, nbytes: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key, nbytes = storage._cdata, storage.nbytes()
                if key not in self._refs:
                    self._refs[key] = 0
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                self._refs[key] += 1
                weakref.finalize(t, self._release, key, nbytes)
        return out


@dataclass(frozen=True)
class PassMemory:
    """Bytes per image of one pass of the network: its input, its outputs and the peak live during it."""

    size: int
    input_bytes: int
    output_bytes: int
    peak_bytes: int


def pass_memory(model: nn.Module, size: int, mask: Sequence[int], dtype: torch.dtype,
                channels_last: bool) -> PassMemory:
    """Trace one forward of ``model`` on a [1, 3, size, size] input on the meta device (``model`` is untouched)."""
    meta = {k: torch.empty_like(v, device="meta")
            for k, v in (*model.named_parameters(), *model.named_buffers())}
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.empty(1, 3, size, size, device="meta", dtype=dtype).contiguous(memory_format=layout)
    with torch.inference_mode(), _LiveBytes() as live:
        locs, confs = functional_call(model, meta, (x,), {"mask": list(mask)})
        out = locs.untyped_storage().nbytes() + confs.untyped_storage().nbytes()
    return PassMemory(size, x.untyped_storage().nbytes(), out, live.peak)


@dataclass(frozen=True)
class GraphMemory:
    """Estimated graph memory of one worker for ``batch_sizes``, in bytes."""

    batch_sizes: tuple[int, ...]
    inputs: int
    outputs: int
    transient: int
    unshared: int          # the same graphs, each captured on its own stream (no memory shared)

    @property
    def total(self) -> int:
        return self.inputs + self.outputs + self.transient


def estimate(passes: Sequence[PassMemory], batch_sizes: Sequence[int]) -> GraphMemory:
    """:class:`GraphMemory` of graphs for every batch size in ``batch_sizes`` and every pass."""
    bs = tuple(sorted(set(batch_sizes), reverse=True))
    if not bs or min(bs) < 1:
        raise ValueError(f"batch sizes must be positive, got {list(batch_sizes)}")
    n = sum(bs)
    return GraphMemory(
        batch_sizes=bs,
        inputs=sum(bs[0] * p.input_bytes for p in passes),
        outputs=sum(n * p.output_bytes for p in passes),
        transient=max(bs[0] * (p.peak_bytes - p.output_bytes) for p in passes),
        unshared=sum(n * (p.peak_bytes + p.input_bytes) for p in passes))


def model_passes(model: nn.Module, cfg: ModelConfig, dtype: torch.dtype) -> list[PassMemory]:
    """:func:`pass_memory` of every pass ``cfg`` runs (backends/ssd/two_scale.py), for ``model`` as prepared."""
    from backends.ssd.two_scale import build_passes
    return [pass_memory(model, p.size, p.mask, dtype, cfg.channels_last) for p in build_passes(cfg)]


def check_fits(mem: GraphMemory, workers: int, free_bytes: int, where: str,
               passes: Sequence[PassMemory] | None = None) -> None:
    """Raise :class:`GraphMemoryError` when ``workers`` x ``mem.total`` exceeds ``free_bytes``.

    With ``passes`` the message also names the largest batch whose graphs would fit.
    """
    need = workers * mem.total
    if need <= free_bytes:
        return
    fits = ""
    if passes is not None:
        smaller = [b for b in range(mem.batch_sizes[0] - 1, 0, -1)
                   if workers * estimate(passes, [min(s, b) for s in mem.batch_sizes]).total <= free_bytes]
        fits = f" (the largest batch that fits: {smaller[0]})" if smaller else " (not even a batch of 1 fits)"
    raise GraphMemoryError(
        f"CUDA graphs for batch sizes {list(mem.batch_sizes)} need about {mem.total / GIB:.1f} GiB per worker, "
        f"{need / GIB:.1f} GiB for the {workers} worker(s) on {where}, which has {free_bytes / GIB:.1f} GiB free: "
        f"lower the batch size (Offline --batch-size, Server --server-max-batch){fits}, "
        "or run without graphs (--no-cuda-graphs)")
