"""PyTorch backend: the two-scale SSD on a CPU or a CUDA GPU, in fp32, bf16 or fp16.

Precision "auto" (the default) becomes fp16 on CUDA, bf16 on a CPU that computes it natively, fp32 on
other CPUs (backends/pytorch/precision.py); the backend's ``cfg`` holds the precision in force and
``precision_reason`` says why, for the log and the run's records.

Assumptions: the QSL hands over resized uint8 images ``{S: [B, 3, S, S]}``
(RGB) and the original sizes ``[B, 2]`` (height, width); normalization
(/255, ImageNet mean and std) happens here, on the device, so only uint8
crosses the host-device link (asynchronously when the QSL pins its memory).
The network runs in the configured precision (BatchNorm folded away, so
every layer is in that precision); decode, softmax and NMS always run in fp32 on the device, and only the final
detections are copied back. fp16 on a CPU works (slowly) and warns: it exists
so that the half-precision code path can be tested without a GPU.

Performance paths (``model.compile``, ``model.cuda_graphs``, see harness/settings/config.py;
backends/pytorch/network.py builds each worker's network):
- BatchNorm is folded into the convolutions at load (backends/ssd/fold.py).
- ``torch.compile``: one compiled module per worker, compiled during warm-up
  (``compile_seconds``); with several workers only together with CUDA graphs.
- CUDA only (UNTESTED ON A GPU so far; the CPU code paths are tested):
  ``cudnn.benchmark`` on, TF32 off (fp32 is IEEE fp32). Each backend owns a
  compute stream and a copy stream. ``stage`` copies a batch to the device on
  the copy stream (the pipeline's loader calls it, so the copy of batch n+1
  overlaps the compute of batch n) and ``predict`` waits for that copy on the
  compute stream. The network replays as a CUDA graph per (batch, size) when
  ``cuda_graphs`` is on; graphs are captured only during ``warmup``
  (backends/pytorch/cuda_graphs.py), after an up-front check that they fit the device
  (backends/pytorch/graph_memory.py). Each GPU gets ``CUDA_WORKERS_PER_GPU`` workers
  sharing its weights, each with its own streams and graphs, so one worker's
  post-processing (NMS has host syncs) overlaps another's network. With device
  "cuda" or "auto" (no index) and several visible GPUs, ``load`` also builds a
  replica per other GPU; ``workers()`` returns them all and the pipeline runs
  one compute thread per worker.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
import warnings
from typing import Any, Mapping

import torch

from backends.base import CUDA_WORKERS_PER_GPU, check_sizes
from backends.model_config import ModelConfig
from backends.ssd.normalize import scale_and_shift
from ground.errors import ConfigError

from backends.pytorch.cuda_graphs import GraphedForward
from backends.pytorch.graph_memory import GraphMemory, check_fits, estimate, model_passes
from backends.pytorch.network import (
    allow_compiles,
    compile_refusal,
    configure_cuda_math,
    network_runner,
    prepare_network,
)
from backends.pytorch.precision import choose_precision, native_bf16
from backends.ssd.checkpoint import describe as describe_checkpoint
from backends.ssd.checkpoint import load_checkpoint
from backends.ssd.model import SSDResNet
from backends.ssd.two_scale import TwoScaleDetector

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class StagedImages(dict):
    """{S: uint8 CUDA Tensor[B, 3, S, S]} copied on a backend's copy stream; ``ready`` marks the copy's end."""

    ready: "torch.cuda.Event | None" = None


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; "cuda" without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but no CUDA GPU is available; use device \"cpu\" or \"auto\"")
    return dev


def read_weights(cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The network's weights from ``cfg.checkpoint``, read and checked once: (state dict, checkpoint info).

    The state dict is the one :class:`PyTorchBackend` would hold after loading the file itself (fp32, the
    network's own names), so a backend given it as ``weights`` computes the same bytes without reading
    the file. None without a checkpoint. Raises CheckpointError naming the file.
    """
    if not cfg.checkpoint:
        return None
    model = SSDResNet(cfg.num_classes, cfg.backbone, cfg.variant)
    info = load_checkpoint(cfg.checkpoint, model, trust_pickle=cfg.trust_pickle)
    return model.state_dict(), info


class PyTorchBackend:
    """The backend interface of ``backends/base.py`` for the SSD in PyTorch."""

    name = "pytorch"
    simulated = False

    def __init__(self, model_cfg: ModelConfig, device: str = "auto", threads: int = 0,
                 trust_pickle: bool = False, weights: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None
                 ) -> None:
        """``weights``: (state dict, info) from :func:`read_weights`, used instead of reading ``model_cfg.checkpoint``.

        ``model_cfg.precision`` "auto" is resolved here, for the device (``self.cfg.precision`` is the one in force).
        """
        self.weights = weights
        self.sizes: tuple[int, ...] = model_cfg.sizes
        self.device = resolve_device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        choice = choose_precision(model_cfg.precision, self.device.type)
        self.cfg = dataclasses.replace(model_cfg, precision=choice.precision)
        self.precision_reason = choice.reason
        # "cuda"/"auto" without an index: one replica per visible GPU (see workers()).
        self._all_gpus = self.device.type == "cuda" and ":" not in device
        self.threads = threads
        self.trust_pickle = trust_pickle
        self.dtype = _DTYPES[self.cfg.precision]
        self.model: SSDResNet | None = None
        self.detector: TwoScaleDetector | None = None
        self.checkpoint_info: dict[str, Any] | None = None
        self.compile_seconds: float | None = None   # warm-up time with model.compile on (mostly compiling)
        self.replicas: list[PyTorchBackend] = []    # the other GPUs' backends (CUDA, several GPUs)
        self.stream = self.copy_stream = None       # CUDA streams, made in load()
        self._twins: list[PyTorchBackend] = []      # more workers on this GPU (CUDA)

    def load(self) -> None:
        """Build the model, load the checkpoint (random weights, seed 0, without one), move it to the device."""
        cfg = self.cfg
        cuda = self.device.type == "cuda"
        gpus = (torch.cuda.device_count() if self._all_gpus else 1) if cuda else 1
        refusal = compile_refusal(cfg, gpus * CUDA_WORKERS_PER_GPU if cuda else 1, cuda and cfg.cuda_graphs)
        if refusal:
            raise ConfigError(refusal)
        if self.threads > 0 and self.device.type == "cpu":
            torch.set_num_threads(self.threads)
        log.info("precision %s (%s)", cfg.precision, self.precision_reason)
        if cfg.precision == "fp16" and self.device.type == "cpu":
            warnings.warn("precision fp16 on the CPU is very slow and meant for tests; use bf16 or fp32 on a CPU",
                          RuntimeWarning, stacklevel=2)
        if cfg.precision == "bf16" and self.device.type == "cpu":
            native, why = native_bf16()
            if not native:
                warnings.warn(f"precision bf16 is emulated on this CPU ({why}): several times slower than fp32; "
                              "use precision auto or fp32", RuntimeWarning, stacklevel=2)
        if cuda:
            configure_cuda_math()
        torch.manual_seed(0)
        model = SSDResNet(cfg.num_classes, cfg.backbone, cfg.variant).eval()
        if self.weights is not None:
            model.load_state_dict(self.weights[0])
            self.checkpoint_info = self.weights[1]
            log.info("%s (read once by the driver)", describe_checkpoint(self.checkpoint_info))
        elif cfg.checkpoint:
            self.checkpoint_info = load_checkpoint(cfg.checkpoint, model, trust_pickle=self.trust_pickle)
            log.info("%s", describe_checkpoint(self.checkpoint_info))
        else:
            log.warning("no model.checkpoint given: using random weights (seed 0); detections are meaningless")
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = prepare_network(model, self.device, self.dtype, cfg.channels_last)
        self.detector = TwoScaleDetector(model, cfg).to(self.device)
        self.detector.model = network_runner(self.model, self.cfg, self.device)
        self._scale, self._shift = scale_and_shift(self.device)   # x_norm = x_uint8 * scale + shift
        if cuda:
            self.stream = torch.cuda.Stream(device=self.device)
            self.copy_stream = torch.cuda.Stream(device=self.device)
            self._twins = [self._twin() for _ in range(CUDA_WORKERS_PER_GPU - 1)]
            if self._all_gpus and not self.replicas:
                for i in range(torch.cuda.device_count()):
                    if i != self.device.index:
                        replica = PyTorchBackend(cfg, f"cuda:{i}", self.threads, self.trust_pickle, self.weights)
                        replica.load()
                        self.replicas.append(replica)
        self.weights = None   # the model holds them now

    def _twin(self) -> "PyTorchBackend":
        """A worker on the same GPU sharing this one's weights, with its own streams, detector, compiled module
        and graphs."""
        twin = copy.copy(self)
        twin.replicas, twin._twins = [], []
        twin.stream = torch.cuda.Stream(device=self.device)
        twin.copy_stream = torch.cuda.Stream(device=self.device)
        twin.detector = copy.copy(self.detector)
        twin.detector.model = network_runner(self.model, self.cfg, self.device)
        return twin

    def graph_runners(self) -> list[GraphedForward]:
        """The CUDA-graph runner of every worker (none on a CPU or with graphs off)."""
        return [w.detector.model for w in self.workers() if isinstance(w.detector.model, GraphedForward)]

    def graph_memory(self, batch_sizes: tuple[int, ...]) -> tuple[GraphMemory, list]:
        """Estimated graph memory of one worker for ``batch_sizes``, and the per-image figures it comes from."""
        passes = model_passes(self.model, self.cfg, self.dtype)
        return estimate(passes, batch_sizes), passes

    def check_graph_memory(self, batch_sizes: tuple[int, ...], free_bytes: int | None = None) -> GraphMemory:
        """Refuse (GraphMemoryError, with the figures) graphs for ``batch_sizes`` that cannot fit a GPU.

        Every GPU holds its workers' graphs; ``free_bytes`` (default: what each GPU reports free now,
        after the weights) is what they must fit in.
        """
        mem, passes = self.graph_memory(batch_sizes)
        per_device: dict[torch.device, int] = {}
        for w in self.workers():
            per_device[w.device] = per_device.get(w.device, 0) + 1
        for device, workers in per_device.items():
            free = torch.cuda.mem_get_info(device)[0] if free_bytes is None else free_bytes
            check_fits(mem, workers, free, str(device), passes)
        log.info("CUDA graphs for batch sizes %s: about %.2f GiB per worker (estimate)",
                 list(mem.batch_sizes), mem.total / 2 ** 30)
        return mem

    def workers(self) -> list["PyTorchBackend"]:
        """Backends that can compute concurrently: this one; on CUDA its twins and every other GPU's workers."""
        return [self, *self._twins, *(w for r in self.replicas for w in r.workers())]

    @torch.inference_mode()
    def stage(self, images: Mapping[int, torch.Tensor], image_hw: torch.Tensor
              ) -> tuple[Mapping[int, torch.Tensor], torch.Tensor]:
        """Start copying a batch to the device (CUDA: on the copy stream); ``predict`` accepts the result.

        On the CPU this returns its arguments unchanged. Copies are asynchronous when the
        host tensors are pinned (the QSL's ``pin_memory``).
        """
        if self.device.type != "cuda":
            return images, image_hw
        staged = StagedImages()
        with torch.cuda.stream(self.copy_stream):
            for s, t in images.items():
                staged[s] = t.to(self.device, non_blocking=True)
            hw = image_hw.to(self.device, non_blocking=True)
            staged.ready = torch.cuda.Event()
            staged.ready.record(self.copy_stream)
        return staged, hw

    def _normalize(self, images: torch.Tensor, size: int, batch: int) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"images[{size}] must be uint8 [B, 3, {size}, {size}], "
                             f"got {str(images.dtype).replace('torch.', '')} {list(images.shape)}")
        if images.shape[0] != batch:
            raise ValueError(f"images[{size}] has {images.shape[0]} images but image_hw has {batch} rows")
        memory = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        # Lay out the uint8 bytes first: the float ops below keep that layout, so no float copy is reordered.
        x = images.to(self.device, non_blocking=True).contiguous(memory_format=memory)
        x = torch.addcmul(self._shift, x, self._scale, value=1.0).to(self.dtype)
        return x.contiguous(memory_format=memory)

    @torch.inference_mode()
    def predict(self, images: Mapping[int, torch.Tensor], image_hw: torch.Tensor) -> list[torch.Tensor]:
        """Detect objects in one batch.

        Args:
            images: {S: uint8 Tensor[B, 3, S, S]} (RGB, resized, not normalized) for every S in ``sizes``.
            image_hw: Tensor[B, 2], original (height, width) in pixels.

        Returns:
            Per image an fp32 CPU Tensor[K, 6]: (x1, y1, x2, y2, score, label), box xyxy normalized
            to [0, 1], label 1..num_classes-1, sorted by decreasing score; K may be 0.
        """
        if self.detector is None:
            raise RuntimeError("PyTorchBackend.predict called before load()")
        check_sizes(images, self.sizes)
        if image_hw.dim() != 2 or image_hw.shape[1] != 2:
            raise ValueError(f"image_hw must be [B, 2] (height, width), got {list(image_hw.shape)}")
        batch = image_hw.shape[0]
        if self.device.type == "cpu":
            inputs = {s: self._normalize(images[s], s, batch) for s in self.sizes}
            return [d.contiguous() for d in self.detector.detect(inputs, image_hw)]
        with torch.cuda.stream(self.stream):
            ready = getattr(images, "ready", None)
            if ready is not None:                      # staged on the copy stream: wait for that copy only
                self.stream.wait_event(ready)
                for s in self.sizes:
                    images[s].record_stream(self.stream)
                image_hw.record_stream(self.stream)
            inputs = {s: self._normalize(images[s], s, batch) for s in self.sizes}
            hw = image_hw.to(self.device, non_blocking=True)
            dets = self.detector.detect(inputs, hw)
            counts = [d.shape[0] for d in dets]
            return list(torch.cat(dets).cpu().split(counts))   # one device-to-host copy per batch

    def warmup(self, batch_sizes: tuple[int, ...] | None = None) -> None:
        """Run zero batches of the given sizes so the first timed query pays no one-off costs.

        This is the only time CUDA graphs are captured and torch.compile compiles: one worker after
        the other, largest batch first (smaller graphs then reuse its memory), while no other thread
        uses the device. A batch size not warmed up here later runs eagerly. With graphs, their
        memory is checked first (:meth:`check_graph_memory`). Default sizes: 1 and 2, and on CUDA
        with graphs every size up to 8 (the default Offline, Server and MultiStream batches).
        """
        graphs = self.device.type == "cuda" and self.cfg.cuda_graphs
        if batch_sizes is None:
            batch_sizes = tuple(range(1, 9)) if graphs else (1, 2)
        batch_sizes = tuple(sorted(set(batch_sizes), reverse=True))
        if graphs:   # graphs already captured hold their memory: only new ones must fit what is free
            captured = {shape[0] for shape in self.detector.model.shapes}
            new = tuple(b for b in batch_sizes if b not in captured)
            if new:
                self.check_graph_memory(new)
        if self.cfg.compile:
            allow_compiles(len(batch_sizes) * len(self.sizes) + 2)     # every (batch, size) compiles once
        t0 = time.perf_counter()
        for worker in self.workers():
            runner = worker.detector.model
            window = runner.capture_window() if isinstance(runner, GraphedForward) else contextlib.nullcontext()
            with window:
                for b in batch_sizes:
                    images = {s: torch.zeros(b, 3, s, s, dtype=torch.uint8) for s in self.sizes}
                    hw = torch.tensor([[self.sizes[0], self.sizes[0]]] * b)
                    worker.predict(images, hw)
                if worker.device.type == "cuda":
                    torch.cuda.synchronize(worker.device)
        if self.cfg.compile:
            self.compile_seconds = time.perf_counter() - t0
            log.info("torch.compile: warm-up of batch sizes %s took %.1f s", list(batch_sizes), self.compile_seconds)
