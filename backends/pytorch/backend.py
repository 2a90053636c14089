"""PyTorch backend: the two-scale SSD on a CPU or a CUDA GPU, in fp32, bf16 or fp16.

Precision "auto" (the default) becomes fp16 on CUDA, bf16 on a CPU that computes it natively, fp32 on
other CPUs (backends/pytorch/precision.py); the backend's ``cfg`` holds the precision in force and
``precision_reason`` says why, for the log and the run's records.

Assumptions: the QSL hands over resized uint8 images ``{S: [B, 3, S, S]}``
(RGB) and the original sizes ``[B, 2]`` (height, width); normalization
(/255, ImageNet mean and std) happens here, on the device, so only uint8
crosses the host-device link (asynchronously when the QSL pins its memory).
The network runs in the configured precision (BatchNorm folded away, so
every layer is in that precision); decode, softmax and NMS always run in fp32
on the device, and only the final detections are copied back. fp16 on a CPU
works (slowly) and warns: it exists so that the half-precision code path can
be tested without a GPU.

The pieces: backends/pytorch/loading.py (device, weights), network.py (each
worker's network: folded, compiled, graphed), warmup.py (the warm-up: graph
memory, captures, compiles), transfer.py (copies and their rules),
cuda_graphs.py and graph_memory.py.

Performance paths (``model.compile``, ``model.cuda_graphs``, see harness/settings/config.py):
- BatchNorm is folded into the convolutions at load (backends/ssd/fold.py).
- ``torch.compile``: one compiled module per worker, compiled during warm-up
  (``compile_seconds``); with several workers only together with CUDA graphs.
- CUDA only (UNTESTED ON A GPU so far; the CPU code paths are tested):
  ``cudnn.benchmark`` on, TF32 off (fp32 is IEEE fp32). Each backend owns a
  compute stream and a copy stream. ``stage`` copies a batch to the device on
  the copy stream (the pipeline's loader calls it, so the copy of batch n+1
  overlaps the compute of batch n) and ``predict`` waits for that copy on the
  compute stream. The network replays as a CUDA graph per (batch, size) when
  ``cuda_graphs`` is on; graphs are captured only during ``warmup``. Each GPU
  gets ``CUDA_WORKERS_PER_GPU`` workers sharing its weights, each with its own
  streams and graphs, so one worker's post-processing overlaps another's
  network. With device "cuda" or "auto" (no index) and several visible GPUs,
  ``load`` also builds a replica per other GPU; ``workers()`` returns them all
  and the pipeline runs one compute thread per worker.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import warnings
from typing import Any, Mapping

import torch

from backends.base import CUDA_WORKERS_PER_GPU, check_sizes
from backends.model_config import ModelConfig
from backends.pytorch.cuda_graphs import GraphedForward
from backends.pytorch.graph_memory import GraphMemory, PassMemory, estimate, model_passes
from backends.pytorch.loading import DTYPES, Weights, build_model, read_weights, resolve_device
from backends.pytorch.network import compile_refusal, configure_cuda_math, network_runner, prepare_network
from backends.pytorch.precision import choose_precision, native_bf16
from backends.pytorch.transfer import predict_on_stream, stage
from backends.pytorch.warmup import CaptureMemory, warm_up
from backends.ssd.model import SSDResNet
from backends.ssd.normalize import scale_and_shift
from backends.ssd.two_scale import TwoScaleDetector
from ground.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["CUDA_WORKERS_PER_GPU", "PyTorchBackend", "read_weights", "resolve_device"]


class PyTorchBackend:
    """The backend interface of ``backends/base.py`` for the SSD in PyTorch."""

    name = "pytorch"
    simulated = False

    def __init__(self, model_cfg: ModelConfig, device: str = "auto", threads: int = 0,
                 trust_pickle: bool = False, weights: Weights | None = None) -> None:
        """``weights``: (state dict, info) from :func:`read_weights`, used instead of reading ``model_cfg.checkpoint``
        (and released by ``load``). ``model_cfg.precision`` "auto" is resolved here, for the device
        (``self.cfg.precision`` is the one in force)."""
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
        self.dtype = DTYPES[self.cfg.precision]
        self.model: SSDResNet | None = None
        self.detector: TwoScaleDetector | None = None
        self.checkpoint_info: dict[str, Any] | None = None
        self.compile_seconds: float | None = None   # warm-up time with model.compile on (mostly compiling)
        self.replicas: list[PyTorchBackend] = []    # the other GPUs' backends (CUDA, several GPUs)
        self.stream = self.copy_stream = None       # CUDA streams, made in load()
        self.cuda_api: Any = torch.cuda             # the torch.cuda module (tests pass a stand-in)
        self.capture_memory: CaptureMemory | None = None   # the last capture's graph memory: estimate and measure
        self._twins: list[PyTorchBackend] = []      # more workers on this GPU (CUDA)

    def load(self) -> None:
        """Build the model, load the checkpoint (random weights, seed 0, without one), move it to the device."""
        cfg = self.cfg
        weights = self.weights
        cuda = self.device.type == "cuda"
        gpus = (torch.cuda.device_count() if self._all_gpus else 1) if cuda else 1
        refusal = compile_refusal(cfg, gpus * CUDA_WORKERS_PER_GPU if cuda else 1, cuda and cfg.cuda_graphs)
        if refusal:
            raise ConfigError(refusal)
        if self.threads > 0 and not cuda:
            torch.set_num_threads(self.threads)
        log.info("precision %s (%s)", cfg.precision, self.precision_reason)
        if cfg.precision == "fp16" and not cuda:
            warnings.warn("precision fp16 on the CPU is very slow and meant for tests; use bf16 or fp32 on a CPU",
                          RuntimeWarning, stacklevel=2)
        if cfg.precision == "bf16" and not cuda:
            native, why = native_bf16()
            if not native:
                warnings.warn(f"precision bf16 is emulated on this CPU ({why}): several times slower than fp32; "
                              "use precision auto or fp32", RuntimeWarning, stacklevel=2)
        if cuda:
            configure_cuda_math()
        model, self.checkpoint_info = build_model(cfg, weights, self.trust_pickle)
        self.model = prepare_network(model, self.device, self.dtype, cfg.channels_last)
        self.detector = TwoScaleDetector(model, cfg).to(self.device)
        self.detector.model = network_runner(self.model, cfg, self.device, len(self.detector.passes))
        self._scale, self._shift = scale_and_shift(self.device)   # x_norm = x_uint8 * scale + shift
        if cuda:
            self.stream = torch.cuda.Stream(device=self.device)
            self.copy_stream = torch.cuda.Stream(device=self.device)
            self._twins = [self._twin() for _ in range(CUDA_WORKERS_PER_GPU - 1)]
            if self._all_gpus and not self.replicas:
                for i in range(torch.cuda.device_count()):
                    if i != self.device.index:
                        replica = PyTorchBackend(cfg, f"cuda:{i}", self.threads, self.trust_pickle, weights)
                        replica.load()
                        self.replicas.append(replica)
        self.weights = None   # the network holds them now; no twin or replica keeps the state dict either

    def _twin(self) -> "PyTorchBackend":
        """A worker on the same GPU sharing this one's weights, with its own streams, detector, compiled module
        and graphs (and never the checkpoint's state dict)."""
        twin = copy.copy(self)
        twin.weights, twin.replicas, twin._twins = None, [], []
        twin.stream = self.cuda_api.Stream(device=self.device)
        twin.copy_stream = self.cuda_api.Stream(device=self.device)
        twin.detector = copy.copy(self.detector)
        twin.detector.model = network_runner(self.model, self.cfg, self.device, len(self.detector.passes))
        return twin

    def graph_runners(self) -> list[GraphedForward]:
        """The CUDA-graph runner of every worker (none on a CPU or with graphs off)."""
        return [w.detector.model for w in self.workers() if isinstance(w.detector.model, GraphedForward)]

    def graph_memory(self, batch_sizes: tuple[int, ...]) -> tuple[GraphMemory, list[PassMemory]]:
        """Estimated graph memory of one worker for ``batch_sizes``, and the per-image figures it comes from."""
        passes = model_passes(self.model, self.cfg, self.dtype)
        return estimate(passes, batch_sizes), passes

    def check_graph_memory(self, batch_sizes: tuple[int, ...], free_bytes: int | None = None) -> GraphMemory:
        """Refuse (GraphMemoryError, with the figures) graphs for ``batch_sizes`` that cannot fit a GPU.

        Every GPU holds its workers' graphs; ``free_bytes`` (default: what each GPU reports free now,
        after the weights) is what they must fit in.
        """
        return CaptureMemory(self, tuple(batch_sizes), free_bytes).mem

    def workers(self) -> list["PyTorchBackend"]:
        """Backends that can compute concurrently: this one; on CUDA its twins and every other GPU's workers."""
        return [self, *self._twins, *(w for r in self.replicas for w in r.workers())]

    @torch.inference_mode()
    def stage(self, images: Mapping[int, torch.Tensor], image_hw: torch.Tensor
              ) -> tuple[Mapping[int, torch.Tensor], torch.Tensor]:
        """Start copying a batch to the device (CUDA: on the copy stream); ``predict`` accepts the result.

        On the CPU this returns its arguments unchanged. Copies are asynchronous when the
        host tensors are pinned (the QSL's ``pin_memory``); backends/pytorch/transfer.py has the rules.
        """
        if self.device.type != "cuda":
            return images, image_hw
        return stage(self.cuda_api, self.copy_stream, self.device, images, image_hw)

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

    def _detect(self, inputs: dict[int, torch.Tensor], image_hw: torch.Tensor) -> list[torch.Tensor]:
        runner = self.detector.model
        # The graph outputs of one pass must survive the next pass's replay (cuda_graphs.py: capture order).
        batch = runner.one_batch() if isinstance(runner, GraphedForward) else contextlib.nullcontext()
        with batch:
            return self.detector.detect(inputs, image_hw)

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

        def to_device(imgs: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
            return {s: self._normalize(imgs[s], s, batch) for s in self.sizes}
        if self.device.type == "cpu":
            return [d.contiguous() for d in self._detect(to_device(images), image_hw)]
        return predict_on_stream(self.cuda_api, self.stream, self.device, images, image_hw, to_device, self._detect)

    def warmup(self, batch_sizes: tuple[int, ...] | None = None) -> None:
        """Run zero batches of the given sizes so the first timed query pays no one-off costs.

        This is the only time CUDA graphs are captured and torch.compile compiles (backends/pytorch/warmup.py):
        one worker after the other, largest batch first, while no other thread uses the device. A batch size
        not warmed up here later runs eagerly. With graphs, their memory is checked first, and measured on the
        largest batch. Default sizes: 1 and 2, and on CUDA with graphs every size up to 8 (the default Offline,
        Server and MultiStream batches).
        """
        if batch_sizes is None:
            batch_sizes = tuple(range(1, 9)) if self.graph_runners() else (1, 2)
        warm_up(self, batch_sizes)
