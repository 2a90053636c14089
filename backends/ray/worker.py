"""The Ray actor: one whole backend on one device of one node.

It runs in a Ray worker process; the driver talks to it through ``proxy.py``. ``start`` builds the
backend by calling the driver's ``factory(device, threads, weights)`` (for the harness: the same code
that builds a local run's backend) with the weights the driver read once and put into Ray's object
store, so the node needs no copy of the checkpoint. A backend with several workers of its own (CUDA:
two per GPU, sharing the weights) serves worker ``i`` on concurrency group ``w<i>``: one worker's
batches run in order, different workers' batches at the same time.

Batches cross as numpy: ``{S: uint8 [B, 3, S, S]}`` and ``[B, 2]`` (height, width). Ray hands numpy
arrays to the actor without copying them out of the object store; torch tensors would be pickled
(measured here: a 34.6 MB batch in 33-42 ms as numpy, 137-165 ms as a tensor). Detections return as
one fp32 array ``[sum K, 6]`` with the per-image counts.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from typing import Any, Callable

import numpy as np
import torch

from backends.ray.cluster import software_versions

MAX_WORKERS_PER_ACTOR = 8
# Ray's concurrency groups: "control" for start/ping, one per backend worker for its batches.
CONCURRENCY_GROUPS = {"control": 1, **{f"w{i}": 1 for i in range(MAX_WORKERS_PER_ACTOR)}}

BackendFactory = Callable[[str, int, Any], Any]   # (device, threads, weights) -> a loaded, warmed-up backend


class WorkerActor:
    """Made remote by ``backend.py`` (``ray.remote(concurrency_groups=CONCURRENCY_GROUPS)``)."""

    def __init__(self) -> None:
        # Arrays from the object store are read-only; the backends only read their inputs.
        warnings.filterwarnings("ignore", message=".*NumPy array is not writable.*")
        self.workers: list[Any] = []
        self.threads = 0
        self._local = threading.local()

    def ping(self) -> dict[str, Any]:
        """The process is up (placed, started, the project's code imported): its process and versions."""
        return {"pid": os.getpid(), "host": socket.gethostname(), "versions": software_versions()}

    def start(self, factory: BackendFactory, device: str, threads: int, weights: Any) -> dict[str, Any]:
        """Build the backend; what the driver needs to know about it."""
        t0 = time.perf_counter()
        backend = factory(device, threads, weights)
        workers = getattr(backend, "workers", None)
        self.workers = list(workers())[:MAX_WORKERS_PER_ACTOR] if callable(workers) else [backend]
        self.threads = threads
        num_classes = getattr(backend, "num_classes", None) or getattr(getattr(backend, "cfg", None),
                                                                      "num_classes", None)
        return {"workers": len(self.workers), "name": getattr(backend, "name", type(backend).__name__),
                "sizes": tuple(backend.sizes), "simulated": bool(getattr(backend, "simulated", False)),
                "num_classes": num_classes, "pid": os.getpid(),
                "device": str(getattr(backend, "device", device)), "build_s": time.perf_counter() - t0}

    def predict(self, index: int, images: dict[int, np.ndarray], image_hw: np.ndarray
                ) -> tuple[np.ndarray, list[int]]:
        """Worker ``index``'s detections for one batch: (fp32 [sum K, 6], K per image)."""
        if self.threads and getattr(self._local, "threads", 0) != self.threads:
            torch.set_num_threads(self.threads)   # per calling thread, as the local pipeline does
            self._local.threads = self.threads
        dets = self.workers[index].predict({s: torch.from_numpy(a) for s, a in images.items()},
                                           torch.from_numpy(image_hw))
        counts = [int(d.shape[0]) for d in dets]
        out = torch.cat(dets) if dets else torch.zeros(0, 6)
        return out.numpy(), counts
