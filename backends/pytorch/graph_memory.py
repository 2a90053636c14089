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
Not counted: cuDNN workspaces (``cudnn.benchmark`` may pick algorithms with
large ones, allocated inside the capture's pool), allocator rounding and
fragmentation, the weights (loaded before), and eager post-processing (decode,
softmax, NMS). So the warm-up also measures: free device memory
(``torch.cuda.mem_get_info``) before and after capturing the largest batch
gives the real cost of that batch's graphs; its ratio to the estimate
(:func:`measured_scale`, at least 1) scales the estimate of the rest before it
is captured, and a capture that runs out of memory anyway becomes
:class:`GraphMemoryError` too (:func:`capture_out_of_memory`).
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


def largest_fitting_batch(passes: Sequence[PassMemory], batch_sizes: Sequence[int], workers: int,
                          free_bytes: float, scale: float = 1.0) -> int:
    """The largest batch b below max(``batch_sizes``) whose graphs (every size capped at b) fit; 0 if none."""
    for b in range(max(batch_sizes) - 1, 0, -1):
        if scale * workers * estimate(passes, [min(s, b) for s in batch_sizes]).total <= free_bytes:
            return b
    return 0


def check_fits(mem: GraphMemory, workers: int, free_bytes: int, where: str,
               passes: Sequence[PassMemory] | None = None, scale: float = 1.0, basis: str = "") -> None:
    """Raise :class:`GraphMemoryError` when ``workers`` x ``mem.total`` x ``scale`` exceeds ``free_bytes``.

    ``scale``: measured cost over estimate (:func:`measured_scale`), said in ``basis``. With ``passes``
    the message also names the largest batch whose graphs would fit.
    """
    need = scale * workers * mem.total
    if need <= free_bytes:
        return
    fits = None
    if passes is not None:
        b = largest_fitting_batch(passes, mem.batch_sizes, workers, free_bytes, scale)
        fits = str(b) if b else "none, not even 1"
    raise GraphMemoryError(
        f"CUDA graphs for batch sizes {list(mem.batch_sizes)} need about {scale * mem.total / GIB:.1f} GiB per "
        f"worker{basis}, {need / GIB:.1f} GiB for the {workers} worker(s) on {where}, which has "
        f"{free_bytes / GIB:.1f} GiB free: {_advice(fits)}")


def _advice(fits: str | None) -> str:
    """What to do about graphs that do not fit; ``fits``: the largest batch that would, if known."""
    known = f"; the largest batch that fits: {fits}" if fits else ""
    return (f"lower the batch size (Offline --batch-size, Server --server-max-batch{known}), "
            "or run without graphs (--no-cuda-graphs)")


def measured_scale(measured_bytes: int, passes: Sequence[PassMemory], batch: int) -> float:
    """How much more than estimated the graphs of ``batch`` really took (at least 1): measured / estimate."""
    return max(1.0, measured_bytes / estimate(passes, [batch]).total)


def capture_out_of_memory(mem: GraphMemory, workers: int, free_bytes: int, where: str, batch: int,
                          passes: Sequence[PassMemory], scale: float) -> GraphMemoryError:
    """The error for a capture of ``batch`` that ran out of device memory although the estimate fit.

    ``free_bytes``: free on ``where`` before its first capture; ``scale``: the measured one, if any. The
    real cost was more than ``free_bytes``, so the scale is at least ``free_bytes`` / the estimate of all.
    """
    scale = max(scale, free_bytes / (workers * mem.total))
    b = largest_fitting_batch(passes, mem.batch_sizes, workers, free_bytes, scale)
    return GraphMemoryError(
        f"capturing the CUDA graphs of batch {batch} on {where} ran out of device memory, although the estimate "
        f"of {mem.total / GIB:.1f} GiB per worker ({workers} worker(s)) fit its {free_bytes / GIB:.1f} GiB free "
        f"(cuDNN workspaces and allocator rounding come on top): {_advice(f'at most {b}' if b else 'none')}")
