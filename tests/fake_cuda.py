"""A stand-in for the parts of ``torch.cuda`` the CUDA path uses, so its scheduling runs on a CPU.

It records what it is asked to do (streams, pools, captures and their error mode, events), and
keeps a fake device allocator: ``free`` bytes, which captures may consume (``charge``) and which
raise ``torch.OutOfMemoryError`` when they would go below zero, like the caching allocator does.
"""
from __future__ import annotations

import contextlib
import threading
from types import SimpleNamespace

import torch


class FakeEvent:
    def __init__(self, log: list):
        self.log = log

    def record(self, stream=None):
        self.log.append(("record", self))

    def synchronize(self):
        self.log.append(("synchronize", self))

    def query(self):
        return True


class FakeCuda:
    """The parts of torch.cuda a GraphedForward and the backend's warm-up use."""

    def __init__(self, free: int = 2 ** 40):
        self.default = SimpleNamespace(name="default", wait_stream=lambda other: None)
        self.streams, self.pools, self.captures, self.current = [], [], [], self.default
        self.capture_threads = set()
        self.capture_modes = []
        self.free, self.total = free, free
        self.capturing = False
        self.log: list = []

    def Stream(self, device=None):  # noqa: N802 - torch.cuda's name
        s = SimpleNamespace(name=f"side{len(self.streams)}", wait_stream=lambda other: None,
                            wait_event=lambda event: self.log.append(("wait", event)))
        self.streams.append(s)
        return s

    def Event(self):  # noqa: N802
        return FakeEvent(self.log)

    def current_stream(self, device=None):
        return self.current

    @contextlib.contextmanager
    def stream(self, s):
        old, self.current = self.current, s
        try:
            yield
        finally:
            self.current = old

    def graph_pool_handle(self):
        self.pools.append(object())
        return self.pools[-1]

    def CUDAGraph(self):  # noqa: N802
        return SimpleNamespace(replays=0, replay=lambda: None)

    @contextlib.contextmanager
    def graph(self, graph, pool=None, stream=None, capture_error_mode="global"):
        self.captures.append((pool, stream))
        self.capture_modes.append(capture_error_mode)
        self.capture_threads.add(threading.get_ident())
        self.capturing = True
        try:
            with self.stream(stream):
                yield
        finally:
            self.capturing = False

    def charge(self, nbytes: int) -> None:
        """A capture's allocation of ``nbytes`` in its pool (held as long as the graph lives)."""
        if self.capturing:
            if nbytes > self.free:
                raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {nbytes} bytes")
            self.free -= nbytes

    def mem_get_info(self, device=None):
        return self.free, self.total

    def synchronize(self, device=None):
        pass

    def empty_cache(self):
        pass

    def device(self, d):
        return contextlib.nullcontext()
