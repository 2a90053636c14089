"""The network's forward pass replayed as CUDA graphs, one per input shape, captured only at warm-up.

UNTESTED ON A GPU so far (no GPU was available when this was written). The
scheduling below (when a shape is captured, on which stream, into which pool,
what runs eagerly) is tested on the CPU with a stand-in for ``torch.cuda``
(tests/test_cuda_graphs.py); the CUDA-only tests skip without a GPU.

Rules this follows (PyTorch's CUDA-graph notes and ``torch.cuda.graph``):

- Only one capture may be underway in a process, and entering one
  synchronizes the device and empties the caching allocator. So shapes are
  captured only inside :meth:`GraphedForward.capture_window`, which the
  backend opens during its warm-up, one worker after the other; a lock keeps
  captures one at a time. After warm-up a shape that was not captured runs
  eagerly (logged once per shape), never captured mid-run.
- Captures use ``capture_error_mode="thread_local"`` (as torch's own
  cudagraph trees do): the default "global" mode makes a CUDA call that is
  unsafe during capture (``cudaMalloc``, a pinned-memory allocation, a sync)
  fail in ANY thread, and nothing stops another thread of the process (a QSL
  loading pinned buffers, a Ray or LoadGen thread) from making one during the
  warm-up. "thread_local" still makes such a call fail in the capturing
  thread, which is the one whose calls would be recorded into the graph.
- Graphs share memory only when they share a pool AND are captured on the
  same stream (the caching allocator reuses a freed block only on the stream
  it was allocated on). Each runner (one per worker) therefore captures every
  graph on ONE stream into ONE pool. Its graphs must replay in capture order
  or one at a time, never concurrently: a worker has one compute thread.
- Outputs of one graph stay valid while another graph of the pool replays
  only if that other graph was captured AFTER it: its outputs were then
  allocated (and are held for the runner's life), so the later capture's
  scratch memory never overlaps them; a graph captured before may have used
  that very memory as scratch. The two-scale detector keeps the first pass's
  outputs while the second pass runs, so calls made inside
  :meth:`GraphedForward.one_batch` must replay graphs in capture order; the
  warm-up captures each batch's passes in the order a batch runs them, and a
  call that breaks the rule raises instead of returning overwritten outputs.
- Static inputs: one buffer per (input size, dtype, layout) holding the
  largest batch; each graph reads a leading slice of it.

Assumptions: the wrapped callable is the SSD network in eval mode,
``model(x, mask) -> (locs, confs)``, with fixed parameters and no host syncs
(true for ``SSDResNet``: convolutions, reshapes, cat); post-processing has
data-dependent shapes and stays eager. A call returns the graph's static
outputs: they stay valid until the same graph replays again, and across the
replay of another graph only under the capture-order rule above.

``eager`` is what runs a shape that has no graph; with torch.compile it is the
uncompiled network, so no compilation can start in a worker thread mid-run
(torch.compile is not thread-safe: pytorch/pytorch#118260, #136833).
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import torch

log = logging.getLogger(__name__)

WARMUP_RUNS = 3        # eager runs on the capture stream before a capture (cuDNN picks its algorithms)
_CAPTURE_LOCK = threading.Lock()   # one capture underway per process


class GraphedForward:
    """Callable like the model: ``runner(x, mask)``, with x a CUDA Tensor[N, 3, S, S].

    ``cuda`` is the ``torch.cuda`` module; tests pass a stand-in to check the scheduling on a CPU.
    """

    def __init__(self, model: Callable, eager: Callable | None = None, cuda: Any = torch.cuda) -> None:
        self.model = model
        self.eager = model if eager is None else eager
        self._cuda = cuda
        self._graphs: dict[tuple, tuple[Any, torch.Tensor, tuple[torch.Tensor, ...]]] = {}
        self._inputs: dict[tuple, torch.Tensor] = {}     # static input buffer per (size, dtype, layout, device)
        self._pool = None                                # one memory pool for every graph of this runner
        self._stream = None                              # the one stream every graph of this runner is captured on
        self._capturing = False
        self._order: dict[tuple, int] = {}               # capture order of each graph
        self._batch_last: int | None = None              # inside one_batch: the latest-captured graph replayed
        self.eager_calls: dict[tuple[int, ...], int] = {}   # uncaptured input shapes met after warm-up -> calls
        self.capture_seconds = 0.0

    @staticmethod
    def _key(x: torch.Tensor, mask: Sequence[int]) -> tuple:
        return tuple(x.shape), x.dtype, x.device, _channels_last(x), tuple(mask)

    @contextlib.contextmanager
    def capture_window(self) -> Iterator[None]:
        """Within this block (warm-up only, one runner at a time) new shapes are captured."""
        self._capturing = True
        try:
            yield
        finally:
            self._capturing = False

    @contextlib.contextmanager
    def one_batch(self) -> Iterator[None]:
        """Calls inside this block keep each other's outputs alive: each graph must come later in capture order."""
        self._batch_last = -1
        try:
            yield
        finally:
            self._batch_last = None

    def _check_order(self, key: tuple) -> None:
        if self._batch_last is None:
            return
        order = self._order[key]
        if order <= self._batch_last:
            raise RuntimeError(
                f"CUDA graph for input {list(key[0])} was not captured after every graph already replayed in this "
                "batch: its replay may overwrite their outputs; capture each batch's passes in the order it runs them")
        self._batch_last = order

    def _input_buffer(self, x: torch.Tensor) -> torch.Tensor:
        """A static slice for ``x``'s shape, of a buffer shared by every batch size of that input size."""
        key = (tuple(x.shape[1:]), x.dtype, x.device, _channels_last(x))
        buf = self._inputs.get(key)
        if buf is None or buf.shape[0] < x.shape[0]:
            layout = torch.channels_last if key[3] else torch.contiguous_format
            buf = torch.empty((x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=layout)
            self._inputs[key] = buf
        return buf[:x.shape[0]]

    def _capture(self, key: tuple, x: torch.Tensor, mask: Sequence[int]):
        cuda = self._cuda
        t0 = time.perf_counter()
        with _CAPTURE_LOCK:
            if self._stream is None:
                self._stream = cuda.Stream(device=x.device)
                self._pool = cuda.graph_pool_handle()
            static_in = self._input_buffer(x)
            static_in.copy_(x)
            stream = self._stream
            stream.wait_stream(cuda.current_stream(x.device))
            with cuda.stream(stream):
                for _ in range(WARMUP_RUNS):
                    self.model(static_in, list(mask))
            cuda.current_stream(x.device).wait_stream(stream)
            graph = cuda.CUDAGraph()
            with cuda.graph(graph, pool=self._pool, stream=stream, capture_error_mode="thread_local"):
                static_out = self.model(static_in, list(mask))
        self._graphs[key] = (graph, static_in, tuple(static_out))
        self._order[key] = len(self._order)
        seconds = time.perf_counter() - t0
        self.capture_seconds += seconds
        log.info("captured a CUDA graph for input %s in %.2f s", list(x.shape), seconds)
        return self._graphs[key]

    def __call__(self, x: torch.Tensor, mask: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        key = self._key(x, mask)
        entry = self._graphs.get(key)
        if entry is None:
            if not self._capturing:
                return self._run_eagerly(x, mask)
            with self._cuda.device(x.device):
                entry = self._capture(key, x, mask)
        self._check_order(key)
        graph, static_in, static_out = entry
        static_in.copy_(x, non_blocking=True)
        graph.replay()
        return static_out[0], static_out[1]

    def _run_eagerly(self, x: torch.Tensor, mask: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        shape = tuple(x.shape)
        if shape not in self.eager_calls:
            log.warning("no CUDA graph was captured at warm-up for input %s: it runs eagerly (slower); "
                        "warm this batch size up to capture it", list(shape))
        self.eager_calls[shape] = self.eager_calls.get(shape, 0) + 1
        return self.eager(x, list(mask))

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Input shapes that have a captured graph, in capture order."""
        return [k[0] for k in self._graphs]


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
