"""A backend's warm-up: every batch shape runs once before timing; CUDA graphs are captured and
torch.compile compiles here, never in a timed run.

Order and rules (backends/pytorch/cuda_graphs.py has the capture rules):

- Workers warm up one after the other, each largest batch first (smaller
  graphs then reuse its pool's memory), each batch's passes in the order a
  batch runs them (the capture-order rule of the graph outputs).
- Graph memory, before any capture: the estimate
  (backends/pytorch/graph_memory.py) must fit what each GPU has free. Then
  the first worker's largest batch is captured between two readings of
  ``mem_get_info`` (after one eager batch of 1, which loads the kernels, and
  after a sync and ``empty_cache``, so only memory held by the new graphs and
  their input buffers counts); the ratio of that measure to
  the estimate (cuDNN workspaces and allocator rounding are not in it) scales
  the estimate of everything not yet captured, which must still fit. A capture
  that runs out of memory all the same raises GraphMemoryError, naming the
  largest batch that would fit; both are InputErrors: one line, exit status 2.
- torch.compile: compiles per device are counted (network.COMPILES) and a
  frame that dynamo could not compile, which then runs (and is captured)
  eagerly, is logged as a warning with the worker's device.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import torch

from backends.base import is_out_of_memory
from backends.pytorch.cuda_graphs import GraphedForward
from backends.pytorch.graph_memory import (
    GIB,
    GraphMemory,
    capture_out_of_memory,
    check_fits,
    measured_scale,
)
from backends.pytorch.network import COMPILES, VARIANTS_PER_PASS, allow_compiles, eager_frames

log = logging.getLogger(__name__)


def out_of_memory(e: BaseException | None) -> bool:
    """Whether ``e`` or an exception it was raised from or during is a device out-of-memory error."""
    while e is not None:
        if is_out_of_memory(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def devices(workers: list[Any]) -> dict[torch.device, int]:
    """Workers per device, in worker order."""
    out: dict[torch.device, int] = {}
    for w in workers:
        out[w.device] = out.get(w.device, 0) + 1
    return out


class CaptureMemory:
    """The graph memory of one warm-up: checked up front, measured on the largest batch, OOM explained."""

    def __init__(self, backend: Any, batch_sizes: tuple[int, ...], free_bytes: int | None = None) -> None:
        self.cuda = backend.cuda_api
        self.mem, self.passes = backend.graph_memory(batch_sizes)
        self.per_device = devices(backend.workers())
        self.free = {d: self._free(d) if free_bytes is None else free_bytes for d in self.per_device}
        self.scale, self.measured = 1.0, None
        for d, n in self.per_device.items():
            check_fits(self.mem, n, self.free[d], str(d), self.passes)

    def _free(self, device: torch.device, settle: bool = False) -> int:
        if settle:
            self.cuda.synchronize(device)
            self.cuda.empty_cache()
        return self.cuda.mem_get_info(device)[0]

    def run(self, worker: Any, batch: int, first: bool) -> None:
        """``worker`` predicts a zero batch of ``batch`` (capturing its graphs), measured when it is the first."""
        measure = first and self.measured is None and batch == self.mem.batch_sizes[0]
        before = 0
        try:
            if measure:
                prime(worker)
                before = self._free(worker.device, settle=True)
            zero_batch(worker, batch)
        except Exception as e:
            if out_of_memory(e):
                raise capture_out_of_memory(self.mem, self.per_device[worker.device], self.free[worker.device],
                                            str(worker.device), batch, self.passes, self.scale) from e
            raise
        if measure:
            self.measured = before - self._free(worker.device, settle=True)
            self.scale = measured_scale(self.measured, self.passes, batch)
            log.info("CUDA graphs of batch %d took %.2f GiB on %s, %.2f x the estimate", batch,
                     self.measured / GIB, worker.device, self.scale)
            basis = f" (the estimate x {self.scale:.2f}, measured on batch {batch})"
            for d, n in self.per_device.items():
                check_fits(self.mem, n, before if d == worker.device else self.free[d], str(d), self.passes,
                           self.scale, basis)


@torch.inference_mode()
def prime(worker: Any) -> None:
    """One eager forward of a batch of 1 per pass, so the kernels and library handles that load on first use
    are in place before graph memory is measured."""
    layout = torch.channels_last if worker.cfg.channels_last else torch.contiguous_format
    for p in worker.detector.passes:
        x = torch.zeros(1, 3, p.size, p.size, dtype=worker.dtype, device=worker.device)
        worker.detector.model.eager(x.contiguous(memory_format=layout), list(p.mask))


def zero_batch(worker: Any, batch: int) -> None:
    """``worker`` predicts ``batch`` black images at every input size."""
    images = {s: torch.zeros(batch, 3, s, s, dtype=torch.uint8) for s in worker.sizes}
    worker.predict(images, torch.tensor([[worker.sizes[0], worker.sizes[0]]] * batch))


def warm_up(backend: Any, batch_sizes: tuple[int, ...]) -> GraphMemory | None:
    """Run ``batch_sizes`` (largest first) on every worker of ``backend``; the graph memory plan, if graphs."""
    batch_sizes = tuple(sorted(set(batch_sizes), reverse=True))
    runners = backend.graph_runners()
    captured = {shape[0] for shape in runners[0].shapes} if runners else set()
    new = tuple(b for b in batch_sizes if b not in captured)
    plan = CaptureMemory(backend, new) if runners and new else None
    if plan is not None:
        backend.capture_memory = plan
    compile_on = backend.cfg.compile
    if compile_on:
        allow_compiles(VARIANTS_PER_PASS * len(backend.detector.passes) * len(backend.workers()) + 2)
    t0 = time.perf_counter()
    for i, worker in enumerate(backend.workers()):
        eager_before = eager_frames() if compile_on else 0
        runner = worker.detector.model
        window = runner.capture_window() if isinstance(runner, GraphedForward) else contextlib.nullcontext()
        with window:
            for b in batch_sizes:
                if plan is not None:
                    plan.run(worker, b, first=i == 0)
                else:
                    zero_batch(worker, b)
        if worker.device.type == "cuda":
            backend.cuda_api.synchronize(worker.device)
        if compile_on and eager_frames() > eager_before:
            log.warning("torch.compile: %d frame(s) of the network on %s could not be compiled and run eagerly "
                        "(a recompile limit or unsupported code; TORCH_LOGS=recompiles says which)",
                        eager_frames() - eager_before, worker.device)
    if compile_on:
        backend.compile_seconds = time.perf_counter() - t0
        log.info("torch.compile: warm-up of batch sizes %s took %.1f s; compiles per device: %s",
                 list(batch_sizes), backend.compile_seconds, dict(COMPILES))
    return plan.mem if plan is not None else None
