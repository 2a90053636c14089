"""BatchNorm folded into the convolution before it, for inference.

In eval mode BatchNorm is a fixed per-channel affine map, y = (x - mean) * g / sqrt(var + eps) + beta,
so a convolution followed by it equals one convolution with

    w' = w * g / sqrt(var + eps)                 (per output channel)
    b' = (b - mean) * g / sqrt(var + eps) + beta (b = 0 for a convolution without bias)

Folding removes a memory-bound pass over every backbone activation (and its
output buffer) at no cost in accuracy: the new weights are computed in float64
and rounded once to the convolution's dtype, so the folded network equals the
unfolded one within that dtype's rounding (tested in fp32 on the CPU).

Assumptions: the model is in eval mode and will not be trained again (the
BatchNorm layers are replaced by ``nn.Identity``, their statistics dropped);
every BatchNorm directly follows the convolution it normalizes, either as the
next module of an ``nn.Sequential`` or as torchvision's ResNet block pairs
(``conv1``/``bn1``, ``conv2``/``bn2``, ``conv3``/``bn3``). That covers every
BatchNorm of the SSD-ResNet backbone (backends/ssd/model.py).
"""
from __future__ import annotations

import torch
from torch import nn

_BLOCK_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold ``bn`` (eval statistics) into ``conv`` in place; ``conv`` gains a bias if it had none."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    if conv.out_channels != bn.num_features:
        raise ValueError(f"BatchNorm of {bn.num_features} channels after a convolution of {conv.out_channels}")
    dtype = conv.weight.dtype
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean.double()) * scale
    if bn.bias is not None:
        bias = bias + bn.bias.double()
    shape = (-1,) + (1,) * (conv.weight.dim() - 1)
    conv.weight.copy_((conv.weight.double() * scale.reshape(shape)).to(dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.to(dtype), requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(bias.to(dtype))


def _is_bn(m: nn.Module | None) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm of ``model`` into the convolution before it; returns how many were folded.

    Raises:
        ValueError: a BatchNorm is left that follows no convolution this function recognizes (the model
            would then silently run a different network in eval mode than the one folded).
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (BatchNorm uses its running statistics)")
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in zip(names, names[1:]):
                conv, bn = module._modules[a], module._modules[b]
                if isinstance(conv, nn.Conv2d) and _is_bn(bn):
                    fold_conv_bn(conv, bn)
                    module._modules[b] = nn.Identity()
                    folded += 1
        for conv_name, bn_name in _BLOCK_PAIRS:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and _is_bn(bn):
                fold_conv_bn(conv, bn)
                setattr(module, bn_name, nn.Identity())
                folded += 1
    left = [name for name, m in model.named_modules() if _is_bn(m)]
    if left:
        raise ValueError(f"BatchNorm layers not after a recognized convolution, left unfolded: {left[:5]}")
    return folded
