"""Input normalization of the SSD-ResNet backbone: ImageNet mean and std on [0, 1] RGB.

The network was trained on ``(x / 255 - mean) / std`` of RGB images (torchvision's
ResNet statistics, used by the MLPerf SSD references); the cache stores the
resized uint8 pixels, so this is applied per batch, on the device.
"""
from __future__ import annotations

import torch

MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)


def scale_and_shift(device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each fp32 Tensor[1, 3, 1, 1] on ``device``, with normalized = uint8 * scale + shift."""
    std = torch.tensor(STD_RGB, device=device).view(1, 3, 1, 1)
    mean = torch.tensor(MEAN_RGB, device=device).view(1, 3, 1, 1)
    return 1.0 / (255.0 * std), -mean / std


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Tensor[N, 3, S, S] of values in [0, 255] (uint8 or float) -> fp32 ``(x / 255 - mean) / std``."""
    scale, shift = scale_and_shift(images.device)
    return images.float() * scale + shift
