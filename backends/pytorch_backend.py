"""PyTorch backend: the two-scale SSD on a CPU or a CUDA GPU, in fp32, bf16 or fp16.

Assumptions: the QSL hands over resized uint8 images ``{S: [B, 3, S, S]}``
(RGB) and the original sizes ``[B, 2]`` (height, width); normalization
(/255, ImageNet mean and std) happens here, on the device, so only uint8
crosses the host-device link (asynchronously when the QSL pins its memory).
The network runs in the configured precision with BatchNorm kept in fp32;
decode, softmax and NMS always run in fp32 on the device, and only the final
detections are copied back. fp16 on a CPU works (slowly) and warns: it exists
so that the half-precision code path can be tested without a GPU.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Mapping

import torch
from torch import nn

from harness.config import ModelConfig
from .ssd.checkpoint import load_checkpoint
from .ssd.model import SSDResNet
from .ssd.two_scale import TwoScaleDetector

log = logging.getLogger(__name__)

MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


class PyTorchBackend:
    """The backend interface of ``backends/base.py`` for the SSD in PyTorch."""

    name = "pytorch"

    def __init__(self, model_cfg: ModelConfig, device: str = "auto", threads: int = 0,
                 trust_pickle: bool = False) -> None:
        self.cfg = model_cfg
        self.sizes: tuple[int, ...] = model_cfg.sizes
        self.device = resolve_device(device)
        self.threads = threads
        self.trust_pickle = trust_pickle
        self.dtype = _DTYPES[model_cfg.precision]
        self.model: SSDResNet | None = None
        self.detector: TwoScaleDetector | None = None
        self.checkpoint_info: dict[str, Any] | None = None

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
        if cfg.checkpoint:
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
        std = torch.tensor(STD_RGB, device=self.device).view(1, 3, 1, 1)
        mean = torch.tensor(MEAN_RGB, device=self.device).view(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * std)      # x_norm = x_uint8 * scale + shift
        self._shift = -mean / std

    def _normalize(self, images: torch.Tensor, size: int, batch: int) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"images[{size}] must be uint8 [B, 3, {size}, {size}], "
                             f"got {str(images.dtype).replace('torch.', '')} {list(images.shape)}")
        if images.shape[0] != batch:
            raise ValueError(f"images[{size}] has {images.shape[0]} images but image_hw has {batch} rows")
        x = images.to(self.device, non_blocking=True).float()
        x = (x * self._scale + self._shift).to(self.dtype)
        memory = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
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
        inputs = {s: self._normalize(images[s], s, batch) for s in self.sizes}
        hw = image_hw.to(self.device, non_blocking=True)
        dets = self.detector.detect(inputs, hw)
        if self.device.type == "cpu":
            return [d.contiguous() for d in dets]
        counts = [d.shape[0] for d in dets]
        return list(torch.cat(dets).cpu().split(counts))   # one device-to-host copy per batch

    def warmup(self, batch_sizes: tuple[int, ...] = (1, 2)) -> None:
        """Run zero batches of the given sizes so the first timed query pays no one-off costs."""
        for b in batch_sizes:
            images = {s: torch.zeros(b, 3, s, s, dtype=torch.uint8) for s in self.sizes}
            hw = torch.tensor([[self.sizes[0], self.sizes[0]]] * b)
            self.predict(images, hw)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
