"""The Ray actor: one whole backend on one device of one node, built in its constructor.

It runs in a Ray worker process; the driver talks to it through ``proxy.py``. The constructor builds
the backend by calling the driver's ``factory(device, threads, weights)`` (for the harness:
``backends.factory.build_worker``) with the weights the driver read once and put into Ray's object
store, so the node needs no copy of the checkpoint, and Ray can restart the actor (same arguments,
same build) when its process dies. A backend with several workers of its own (CUDA: two per GPU,
sharing the weights) serves worker ``i`` on concurrency group ``w<i>``: one worker's batches run in
order, different workers' batches at the same time.

Samples: the driver puts each set LoadGen loads into the object store once (``samples.py``) and
hands it to every actor (``load_set``); Ray brings it to each node once, and the actors of a node
map the same shared memory. A batch then names rows of that set (``predict_rows``): the actor
gathers them into buffers of the calling worker's own (pinned when CUDA is available, so the
backend's ``stage`` copies them to the device asynchronously) and predicts. Arrays from the object
store are read-only; the backends only read their inputs.

Batches given as images (``predict``: the start-up image, direct evaluation) cross as numpy
``{S: uint8 [B, 3, S, S]}`` and ``[B, 2]``. Detections return as one fp32 array ``[sum K, 6]`` with
the per-image counts.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .cluster import software_versions

MAX_WORKERS_PER_ACTOR = 8
# Ray's concurrency groups: "control" for pings and sample sets, one per backend worker for its batches.
CONCURRENCY_GROUPS = {"control": 1, **{f"w{i}": 1 for i in range(MAX_WORKERS_PER_ACTOR)}}

BackendFactory = Callable[[str, int, Any], Any]   # (device, threads, weights) -> a loaded, warmed-up backend


class StagingBuffers:
    """One worker's input buffers {S: uint8 [capacity, 3, S, S]}, grown to the largest batch, reused."""

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self._tensors: dict[int, torch.Tensor] = {}

    def gather(self, arrays: Mapping[int, np.ndarray], rows: np.ndarray) -> dict[int, torch.Tensor]:
        """Rows ``rows`` of each ``arrays[S]`` ([M, 3, S, S]) copied into the buffers: {S: Tensor[B, 3, S, S]}."""
        out = {}
        for s, a in arrays.items():
            t = self._tensors.get(s)
            if t is None or t.shape[0] < len(rows):
                t = self._tensors[s] = torch.empty((len(rows), *a.shape[1:]), dtype=torch.uint8,
                                                    pin_memory=self.pin)
            out[s] = t[:len(rows)]
            np.take(a, rows, axis=0, out=out[s].numpy())
        return out


class WorkerActor:
    """Made remote by ``backend.py`` (``ray.remote(concurrency_groups=CONCURRENCY_GROUPS)``)."""

    def __init__(self, factory: BackendFactory, device: str, threads: int, weights: Any,
                 driver_versions: dict[str, str]) -> None:
        warnings.filterwarnings("ignore", message=".*NumPy array is not writable.*")
        self.versions = software_versions()
        self.workers: list[Any] = []
        self.threads = threads
        self.info: dict[str, Any] = {}
        self._local = threading.local()
        self._sets: dict[int, tuple[dict[int, np.ndarray], np.ndarray]] = {}   # version -> (images, image_hw)
        pin = torch.cuda.is_available() and device.startswith("cuda")
        self._buffers = [StagingBuffers(pin) for _ in range(MAX_WORKERS_PER_ACTOR)]
        if self.versions != driver_versions:
            return   # nothing is built with other versions: the driver's first ping names them
        t0 = time.perf_counter()
        backend = factory(device, threads, weights)
        workers = getattr(backend, "workers", None)
        self.workers = list(workers())[:MAX_WORKERS_PER_ACTOR] if callable(workers) else [backend]
        num_classes = getattr(backend, "num_classes", None) or getattr(getattr(backend, "cfg", None),
                                                                      "num_classes", None)
        self.info = {"workers": len(self.workers), "name": getattr(backend, "name", type(backend).__name__),
                     "sizes": tuple(backend.sizes), "simulated": bool(getattr(backend, "simulated", False)),
                     "num_classes": num_classes, "device": str(getattr(backend, "device", device)),
                     "build_s": time.perf_counter() - t0, "pinned": pin}

    def ping(self) -> dict[str, Any]:
        """Up and built: its process, node, versions, and what it built (empty when versions differ)."""
        import ray
        return {"pid": os.getpid(), "host": socket.gethostname(), "versions": self.versions,
                "node_id": ray.get_runtime_context().get_node_id(), "sets": sorted(self._sets), **self.info}

    def load_set(self, version: int, data: tuple[dict[int, np.ndarray], np.ndarray]) -> int:
        """Hold sample set ``version``: ({S: uint8 [M, 3, S, S]}, [M, 2]) as Ray resolved the driver's reference
        (this node's shared copy); older sets are dropped."""
        self._sets = {version: data}
        return version

    def _threads(self) -> None:
        if self.threads and getattr(self._local, "threads", 0) != self.threads:
            torch.set_num_threads(self.threads)   # per calling thread, as the local pipeline does
            self._local.threads = self.threads

    def _run(self, index: int, images: Mapping[int, torch.Tensor], image_hw: torch.Tensor
             ) -> tuple[np.ndarray, list[int]]:
        self._threads()
        worker = self.workers[index]
        stage = getattr(worker, "stage", None)
        dets = worker.predict(*(stage(images, image_hw) if stage is not None else (images, image_hw)))
        counts = [int(d.shape[0]) for d in dets]
        out = torch.cat(dets) if dets else torch.zeros(0, 6)
        return out.numpy(), counts

    def predict_rows(self, index: int, version: int, rows: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Worker ``index``'s detections for rows ``rows`` of sample set ``version``: (fp32 [sum K, 6], K per image)."""
        held = self._sets.get(version)
        if held is None:
            raise KeyError(f"sample set {version} is not loaded on this worker (it holds {sorted(self._sets)})")
        images, hw = held
        rows = np.asarray(rows, dtype=np.int64)
        return self._run(index, self._buffers[index].gather(images, rows), torch.from_numpy(hw[rows]))

    def predict(self, index: int, images: dict[int, np.ndarray], image_hw: np.ndarray
                ) -> tuple[np.ndarray, list[int]]:
        """Worker ``index``'s detections for a batch given as images: (fp32 [sum K, 6], K per image)."""
        return self._run(index, {s: torch.from_numpy(a) for s, a in images.items()}, torch.from_numpy(image_hw))
