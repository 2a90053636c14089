"""PyTorch backend: the two-scale SSD on a CPU or a CUDA GPU, in fp32, bf16 or fp16.

Assumptions: the QSL hands over resized uint8 images ``{S: [B, 3, S, S]}``
(RGB) and the original sizes ``[B, 2]`` (height, width); normalization
(/255, ImageNet mean and std) happens here, on the device, so only uint8
crosses the host-device link (asynchronously when the QSL pins its memory).
The network runs in the configured precision with BatchNorm kept in fp32;
decode, softmax and NMS always run in fp32 on the device, and only the final
detections are copied back. fp16 on a CPU works (slowly) and warns: it exists
so that the half-precision code path can be tested without a GPU.

Performance paths (``model.compile``, ``model.cuda_graphs``, see harness/settings/config.py):
- ``torch.compile`` of the network, on any device; warm-up pays the compile
  time, kept in ``compile_seconds``.
- CUDA only (UNTESTED ON A GPU so far; the CPU code paths are tested): each
  backend owns a compute stream and a copy stream. ``stage`` copies a batch to
  the device on the copy stream (the pipeline's loader calls it, so the copy of
  batch n+1 overlaps the compute of batch n) and ``predict`` waits for that
  copy on the compute stream. The network replays as a CUDA graph per (batch,
  size) when ``cuda_graphs`` is on. Each GPU gets ``CUDA_WORKERS_PER_GPU``
  workers sharing its weights, each with its own streams and graphs, so one
  worker's post-processing (NMS has host syncs) overlaps another's network.
  With device "cuda" or "auto" (no index) and several visible GPUs, ``load``
  also builds a replica per other GPU; ``workers()`` returns them all and the
  pipeline runs one compute thread per worker.
"""
from __future__ import annotations

import copy
import logging
import time
import warnings
from typing import Any, Mapping

import torch
from torch import nn

from backends.config import ModelConfig

from .cuda_graphs import GraphedForward
from .ssd.checkpoint import load_checkpoint
from .ssd.model import SSDResNet
from .ssd.two_scale import TwoScaleDetector

log = logging.getLogger(__name__)

MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_RECOMPILE_LIMIT = 64   # compiled shapes kept per network (CUDA graphs: every batch size x input size)
COMPILE_BACKEND = "inductor"   # torch.compile backend (tests swap in a faster-compiling one)
CUDA_WORKERS_PER_GPU = 2       # compute workers (own streams and graphs, shared weights) per GPU


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


def cast_network(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast ``model`` to ``dtype`` except BatchNorm layers, which stay fp32 (mixed BN kernels handle it)."""
    model.to(dtype)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.float()
    return model


def read_weights(cfg: ModelConfig) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
    """The network's weights from ``cfg.checkpoint``, read and checked once: (state dict, checkpoint info).

    The state dict is the one :class:`PyTorchBackend` would hold after loading the file itself (fp32, the
    network's own names), so a backend given it as ``weights`` computes the same bytes without reading
    the file. (None, None) without a checkpoint. Raises CheckpointError naming the file.
    """
    if not cfg.checkpoint:
        return None, None
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
        """``weights``: (state dict, info) from :func:`read_weights`, used instead of reading ``model_cfg.checkpoint``."""
        self.cfg = model_cfg
        self.weights = weights
        self.sizes: tuple[int, ...] = model_cfg.sizes
        self.device = resolve_device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        # "cuda"/"auto" without an index: one replica per visible GPU (see workers()).
        self._all_gpus = self.device.type == "cuda" and ":" not in device
        self.threads = threads
        self.trust_pickle = trust_pickle
        self.dtype = _DTYPES[model_cfg.precision]
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
        if self.threads > 0 and self.device.type == "cpu":
            torch.set_num_threads(self.threads)
        if cfg.precision == "fp16" and self.device.type == "cpu":
            warnings.warn("precision fp16 on the CPU is very slow and meant for tests; use bf16 or fp32 on a CPU",
                          RuntimeWarning, stacklevel=2)
        torch.manual_seed(0)
        model = SSDResNet(cfg.num_classes, cfg.backbone, cfg.variant).eval()
        if self.weights is not None:
            model.load_state_dict(self.weights[0])
            self.checkpoint_info = self.weights[1]
            log.info("loaded weights read from %s", self.checkpoint_info)
        elif cfg.checkpoint:
            self.checkpoint_info = load_checkpoint(cfg.checkpoint, model, trust_pickle=self.trust_pickle)
            log.info("loaded checkpoint %s", self.checkpoint_info)
        else:
            log.warning("no model.checkpoint given: using random weights (seed 0); detections are meaningless")
        for p in model.parameters():
            p.requires_grad_(False)
        model.to(self.device)
        cast_network(model, self.dtype)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.detector = TwoScaleDetector(model, cfg).to(self.device)
        self._network = self._compiled(model)
        self.detector.model = self._graphed(self._network)
        std = torch.tensor(STD_RGB, device=self.device).view(1, 3, 1, 1)
        mean = torch.tensor(MEAN_RGB, device=self.device).view(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * std)      # x_norm = x_uint8 * scale + shift
        self._shift = -mean / std
        if self.device.type == "cuda":
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
        """A worker on the same GPU sharing this one's weights, with its own streams, detector and graphs."""
        twin = copy.copy(self)
        twin.replicas, twin._twins = [], []
        twin.stream = torch.cuda.Stream(device=self.device)
        twin.copy_stream = torch.cuda.Stream(device=self.device)
        twin.detector = copy.copy(self.detector)
        twin.detector.model = self._graphed(self._network)
        return twin

    def _compiled(self, model: nn.Module):
        """The network, through torch.compile when configured."""
        forward = model
        if self.cfg.compile:
            import torch._dynamo.config as dynamo_config
            dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, COMPILE_RECOMPILE_LIMIT)
            # With CUDA graphs every (batch, size) is captured, so static shapes cost nothing more; elsewhere
            # torch's automatic dynamic shapes stop recompiling once a second batch size has been seen.
            static = self.device.type == "cuda" and self.cfg.cuda_graphs
            forward = torch.compile(model, backend=COMPILE_BACKEND, dynamic=False if static else None)
        return forward

    def _graphed(self, forward):
        """``forward`` replayed as CUDA graphs when configured (CUDA only)."""
        if self.cfg.cuda_graphs and self.device.type == "cuda":
            return GraphedForward(forward)
        return forward

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
        missing = [s for s in self.sizes if s not in images]
        if missing:
            raise ValueError(f"no images given for size(s) {missing}; this model needs sizes {list(self.sizes)}")
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

        Default sizes: 1 and 2, and on CUDA with graphs every size up to 8 (the default Offline,
        Server and MultiStream batches), so no graph is captured during a timed run.
        """
        if batch_sizes is None:
            graphs = self.device.type == "cuda" and self.cfg.cuda_graphs
            batch_sizes = tuple(range(1, 9)) if graphs else (1, 2)
        t0 = time.perf_counter()
        for worker in self.workers():
            for b in batch_sizes:
                images = {s: torch.zeros(b, 3, s, s, dtype=torch.uint8) for s in self.sizes}
                hw = torch.tensor([[self.sizes[0], self.sizes[0]]] * b)
                worker.predict(images, hw)
            if worker.device.type == "cuda":
                torch.cuda.synchronize(worker.device)
        if self.cfg.compile:
            self.compile_seconds = time.perf_counter() - t0
            log.info("torch.compile: warm-up of batch sizes %s took %.1f s", list(batch_sizes), self.compile_seconds)
