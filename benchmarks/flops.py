"""Model FLOPs per sample and model FLOP utilization (MFU) against a GPU's dense fp16 peak.

FLOPs are counted, not guessed: the network runs once on the meta device (no
memory, no compute) with a hook on every convolution adding
2 * (C_in / groups) * k_h * k_w * C_out * H_out * W_out (FLOPs = 2 x MACs,
the convention of SPEC.md section 9, whose SSD-ResNet34 figures the counter
reproduces: 31.7 G at 300, 124 G at 600). Only convolutions are counted
(BatchNorm, ReLU and the heads' reshapes are a fraction of a percent); a
two-scale sample costs the sum of its passes, each with its own feature-map
mask. Post-processing (decode, NMS) is not model FLOPs.

MFU = FLOPs per sample x samples/s / peak. Peaks are dense (no sparsity)
fp16 tensor-core figures from the vendors' data sheets; an unknown GPU gives
no MFU rather than a wrong one.
"""
from __future__ import annotations

import torch
from torch import nn

from backends.model_config import ModelConfig
from backends.ssd.model import SSDResNet
from backends.ssd.two_scale import build_passes

# Dense fp16 tensor-core peak in TFLOPS, matched against torch.cuda.get_device_name() (first match wins).
PEAK_FP16_TFLOPS = (
    ("H200", 989.0),
    ("H100 SXM", 989.0),
    ("H100 80GB HBM3", 989.0),   # how torch names the H100 SXM
    ("H100 PCIe", 756.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("V100", 125.0),
    ("T4", 65.0),
)


def conv_flops(model: nn.Module, size: int, mask: tuple[int, ...]) -> int:
    """FLOPs (2 x MACs) of the convolutions of one forward on a [1, 3, size, size] input with ``mask``."""
    total = 0

    def hook(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += 2 * (m.in_channels // m.groups) * kh * kw * out.shape[1] * out.shape[2] * out.shape[3]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, size, size, device="meta"), list(mask))
    finally:
        for h in handles:
            h.remove()
    return total


def flops_per_sample(cfg: ModelConfig) -> int:
    """FLOPs of one sample under ``cfg``: every pass of the two-scale method, masks applied."""
    with torch.device("meta"):
        model = SSDResNet(cfg.num_classes, cfg.backbone, cfg.variant).eval()
    return sum(conv_flops(model, p.size, p.mask) for p in build_passes(cfg))


def peak_fp16_tflops(device_name: str) -> float | None:
    """Dense fp16 peak of the named GPU in TFLOPS, or None when it is not in the table."""
    for key, peak in PEAK_FP16_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


def mfu(samples_per_s: float, flops: int, device_name: str) -> float | None:
    """Model FLOP utilization in [0, 1], or None for an unknown device (CPUs included)."""
    peak = peak_fp16_tflops(device_name)
    return None if peak is None else samples_per_s * flops / (peak * 1e12)
