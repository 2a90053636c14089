"""A run's backend built from plain data: what a Ray worker needs to build it, and nothing more.

Everything that depends on the run (LoadGen's settings in user.conf, the data set's counts, the
scenario's batch shapes) is worked out by the process that runs LoadGen and put in a
:class:`BackendSpec`; :func:`build_backend` then needs only this package and ``ground``. A Ray worker
on a node without the project's checkout (Ray ships ``backends`` and ``ground`` with the job) builds
exactly what a local run builds: the same model, the same warm-up, the same per-image execution on a
CPU, so its detections are byte for byte the local ones.

Assumptions: ``kind`` is one of ``--backend``'s choices; ``weights`` is what
``backends.pytorch.backend.read_weights`` returned on the driver (None: the model's own checkpoint
path, or random weights).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from backends.base import predict_one_by_one
from backends.model_config import ModelConfig
from backends.simulated.profiles import SimSettings

KINDS = ("pytorch", "simulated", "null")


@dataclass(frozen=True)
class BackendSpec:
    """What a worker builds; every field is plain data the driver computed."""

    kind: str                                 # "pytorch", "simulated" or "null" (--backend)
    model: ModelConfig
    batch_invariant: str = "auto"             # "on": each image runs alone; "off"; "auto": on for a CPU
    warmup_sizes: tuple[int, ...] = (1,)      # batch sizes warmed up without CUDA graphs, largest first
    graph_sizes: tuple[int, ...] = (1,)       # with CUDA graphs: every batch shape the run can give
    sim: SimSettings | None = None            # kind "simulated": its devices and their timing


class OneByOne:
    """``inner`` running each image of a batch on its own (batch-invariant bytes on a CPU); other
    attributes pass through."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def workers(self) -> list[Any]:
        """One per worker of ``inner`` (itself when ``inner`` has none), each running images one by one."""
        workers = getattr(self.inner, "workers", None)
        inner = list(workers()) if callable(workers) else [self.inner]
        return [self if w is self.inner else OneByOne(w) for w in inner]

    def predict(self, images: Mapping[int, torch.Tensor], image_hw: torch.Tensor) -> list[torch.Tensor]:
        """As ``inner.predict``: {S: uint8 Tensor[B, 3, S, S]}, Tensor[B, 2] -> B x fp32 Tensor[K, 6]."""
        return predict_one_by_one(self.inner, images, image_hw)


def build_backend(spec: BackendSpec, device: str, threads: int = 0, weights: Any = None) -> tuple[Any, bool]:
    """``spec``'s backend on ``device``, loaded and warmed up: (backend, whether it must run images one by one).

    ``threads``: torch CPU threads (0 = torch's default). The caller wraps a backend that must run
    images one by one (:class:`OneByOne`, or the harness's own guard).
    """
    if spec.kind == "null":
        from backends.null import NullBackend
        return NullBackend(spec.model), False
    if spec.kind == "simulated":
        from backends.simulated.backend import SimulatedBackend
        from backends.simulated.profiles import DEFAULT_PROFILE, PROFILES
        return SimulatedBackend(spec.model, spec.sim or SimSettings(PROFILES[DEFAULT_PROFILE])), False
    if spec.kind != "pytorch":
        raise ValueError(f"unknown backend {spec.kind!r}; expected one of {', '.join(KINDS)}")
    from backends.pytorch.backend import PyTorchBackend
    backend = PyTorchBackend(spec.model, device=device, threads=threads, trust_pickle=spec.model.trust_pickle,
                             weights=weights)
    backend.load()
    on_cpu = str(getattr(backend, "device", "cpu")).startswith("cpu")
    per_image = {"on": True, "off": False}.get(spec.batch_invariant, on_cpu)
    if per_image:   # the network only ever sees batches of one
        backend.warmup(batch_sizes=(1,))
        return backend, True
    graphs = not on_cpu and spec.model.cuda_graphs
    backend.warmup(batch_sizes=spec.graph_sizes if graphs else spec.warmup_sizes)
    return backend, False


def build_worker(spec: BackendSpec, device: str, threads: int, weights: Any) -> Any:
    """On a Ray worker: :func:`build_backend`, running images one by one where the local run does."""
    backend, per_image = build_backend(spec, device, threads, weights)
    return OneByOne(backend) if per_image else backend
