"""Where a PyTorch backend runs and the network it starts from: device, precision, weights.

Assumptions: "auto" means the current CUDA GPU when torch sees one, else the
CPU; a checkpoint is read and checked by backends/ssd/checkpoint.py (fp32, the
network's own names). Without a checkpoint the weights are random, seed 0.
A state dict read once by a driver (:func:`read_weights`) may be handed to
every backend instead of the file; it is used once, while the network is
built, and not kept: the network holds the weights from then on.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from backends.model_config import ModelConfig
from backends.ssd.checkpoint import describe as describe_checkpoint
from backends.ssd.checkpoint import load_checkpoint
from backends.ssd.model import SSDResNet

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

Weights = tuple[dict[str, torch.Tensor], dict[str, Any]]   # (state dict, checkpoint info)


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; "cuda" without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but no CUDA GPU is available; use device \"cpu\" or \"auto\"")
    return dev


def read_weights(cfg: ModelConfig) -> Weights | None:
    """The network's weights from ``cfg.checkpoint``, read and checked once: (state dict, checkpoint info).

    The state dict is the one :class:`~backends.pytorch.backend.PyTorchBackend` would hold after loading
    the file itself (fp32, the network's own names), so a backend given it as ``weights`` computes the same
    bytes without reading the file. None without a checkpoint. Raises CheckpointError naming the file.
    """
    if not cfg.checkpoint:
        return None
    model = SSDResNet(cfg.num_classes, cfg.backbone, cfg.variant)
    info = load_checkpoint(cfg.checkpoint, model, trust_pickle=cfg.trust_pickle)
    return model.state_dict(), info


def build_model(cfg: ModelConfig, weights: Weights | None, trust_pickle: bool) -> tuple[SSDResNet, dict | None]:
    """The eval-mode fp32 CPU network with its weights (``weights``, else the checkpoint, else random, seed 0)
    and the checkpoint's info; ``weights`` is only read (its tensors are copied into the network)."""
    torch.manual_seed(0)
    model = SSDResNet(cfg.num_classes, cfg.backbone, cfg.variant).eval()
    info = None
    if weights is not None:
        model.load_state_dict(weights[0])
        info = weights[1]
        log.info("%s (read once by the driver)", describe_checkpoint(info))
    elif cfg.checkpoint:
        info = load_checkpoint(cfg.checkpoint, model, trust_pickle=trust_pickle)
        log.info("%s", describe_checkpoint(info))
    else:
        log.warning("no model.checkpoint given: using random weights (seed 0); detections are meaningless")
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info
