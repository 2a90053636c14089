"""The network's forward pass replayed as CUDA graphs, one per (batch size, input size).

UNTESTED ON A GPU so far (no GPU was available when this was written; the
CUDA-only tests in tests/test_perf_paths.py skip without one).

Assumptions: the wrapped callable is the SSD network in eval mode,
``model(x, mask) -> (locs, confs)``, with fixed parameters and no host syncs
inside (true for ``SSDResNet``: convolutions, reshapes, cat). Post-processing
has data-dependent shapes (thresholds, NMS) and stays eager.

A graph is captured the first time a shape is seen (a few eager warm-up runs
on a side stream first, as CUDA graph capture requires), into a memory pool
shared by all graphs of this runner. Each call copies the input into the
graph's static input buffer, replays, and returns the graph's static outputs:
they stay valid only until the next call with the same shape, so the caller
must consume them first (the two-scale detector does: decode and softmax make
new fp32 tensors at once). Shapes beyond ``max_graphs`` run eagerly.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

import torch

log = logging.getLogger(__name__)

WARMUP_RUNS = 3        # eager runs on a side stream before a capture (cuDNN picks its algorithms)
MAX_GRAPHS = 32        # graphs kept per runner; more shapes than this run eagerly


class GraphedForward:
    """Callable like the model: ``runner(x, mask)``, with x a CUDA Tensor[N, 3, S, S]."""

    def __init__(self, model: Callable, max_graphs: int = MAX_GRAPHS) -> None:
        self.model = model
        self.max_graphs = max_graphs
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple[torch.Tensor, ...]]] = {}
        self._pool = None
        self.capture_seconds = 0.0

    @staticmethod
    def _key(x: torch.Tensor, mask: Sequence[int]) -> tuple:
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return tuple(x.shape), x.dtype, x.device, channels_last, tuple(mask)

    def _capture(self, key: tuple, x: torch.Tensor, mask: Sequence[int]):
        t0 = time.perf_counter()
        static_in = torch.empty_like(x)          # keeps x's memory format
        static_in.copy_(x)
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self.model(static_in, list(mask))
        torch.cuda.current_stream(x.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # Capture on the side stream of x's device (torch's default capture stream lives on one device only).
        with torch.cuda.graph(graph, pool=self._pool, stream=side):
            static_out = self.model(static_in, list(mask))
        self._graphs[key] = (graph, static_in, tuple(static_out))
        self.capture_seconds += time.perf_counter() - t0
        log.info("captured a CUDA graph for input %s in %.2f s", list(x.shape), time.perf_counter() - t0)
        return self._graphs[key]

    def __call__(self, x: torch.Tensor, mask: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        key = self._key(x, mask)
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= self.max_graphs:
                return self.model(x, list(mask))
            with torch.cuda.device(x.device):
                entry = self._capture(key, x, mask)
        graph, static_in, static_out = entry
        static_in.copy_(x, non_blocking=True)
        graph.replay()
        return static_out[0], static_out[1]

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Input shapes that have a captured graph."""
        return [k[0] for k in self._graphs]
