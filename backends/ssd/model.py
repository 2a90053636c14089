"""SSD with a ResNet backbone, parameter-compatible with the MLPerf SSD checkpoints.

Layer names and shapes follow the MLPerf training reference (SSD-ResNet34,
v0.5/v0.6) so its ``model300.pt`` / ``model700.pt`` state dicts load unchanged:

- ``model.layer1``: torchvision ResNet conv1, bn1, relu, maxpool, layer1, layer2
  (stride 8 in total); ``model.layer2``: torchvision layer3 with its first block's
  stride changed from 2 to 1. Output: 256 channels at stride 8.
- ``additional_blocks.k``: 1x1 conv + ReLU + 3x3 conv + ReLU (biases, no BatchNorm).
- ``loc.i`` / ``conf.i``: 3x3 heads, ``nd_i * 4`` and ``nd_i * num_classes`` channels.

The ``ssd1200`` variant (MLPerf inference SSD-ResNet34 1200x1200) has the same
parameters, but its heads use stride 3 and extra blocks 0-3 use stride 2.

Head outputs ``(N, nd*4, H, W)`` are reshaped to ``(N, 4, nd*H*W)`` with no
permute, as the checkpoints were trained: box index = d*H*W + y*W + x.
No weights are downloaded: the backbone starts random and a checkpoint overrides it.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torchvision
from torch import nn

from backends.ssd.geometry import VARIANT_STRIDES, feature_sizes, min_image_size  # noqa: F401 - part of this interface

MAP_CHANNELS = (256, 512, 512, 256, 256, 256)
BOXES_PER_LOCATION = (4, 6, 6, 6, 4, 4)
EXTRA_MID_CHANNELS = (256, 256, 128, 128, 128)

class _Backbone(nn.Module):
    """ResNet cut at layer3, stride 8: names ``layer1`` (stem..layer2) and ``layer2`` (layer3)."""

    def __init__(self, depth: str) -> None:
        super().__init__()
        builders = {"resnet34": torchvision.models.resnet34, "resnet18": torchvision.models.resnet18}
        if depth not in builders:
            raise ValueError(f"backbone must be one of {', '.join(builders)}, got {depth!r}")
        rn = builders[depth](weights=None)
        self.layer1 = nn.Sequential(rn.conv1, rn.bn1, rn.relu, rn.maxpool, rn.layer1, rn.layer2)
        first = rn.layer3[0]
        first.conv1.stride = (1, 1)
        first.downsample[0].stride = (1, 1)
        self.layer2 = nn.Sequential(rn.layer3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.layer1(x))


class SSDResNet(nn.Module):
    """SSD detector. ``forward`` returns locs (N, 4, B) and confs (N, C, B) over the kept maps."""

    def __init__(self, num_classes: int = 81, backbone: str = "resnet34", variant: str = "training") -> None:
        super().__init__()
        if variant not in VARIANT_STRIDES:
            raise ValueError(f"variant must be one of {', '.join(VARIANT_STRIDES)}, got {variant!r}")
        self.num_classes = num_classes
        self.variant = variant
        head_stride, extras = VARIANT_STRIDES[variant]
        self.model = _Backbone(backbone)
        self.additional_blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(cin, mid, kernel_size=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(mid, cout, kernel_size=3, stride=stride, padding=pad),
                nn.ReLU(inplace=True),
            )
            for cin, mid, cout, (stride, pad) in zip(
                MAP_CHANNELS[:-1], EXTRA_MID_CHANNELS, MAP_CHANNELS[1:], extras)
        )
        self.loc = nn.ModuleList(
            nn.Conv2d(c, nd * 4, kernel_size=3, padding=1, stride=head_stride)
            for c, nd in zip(MAP_CHANNELS, BOXES_PER_LOCATION))
        self.conf = nn.ModuleList(
            nn.Conv2d(c, nd * num_classes, kernel_size=3, padding=1, stride=head_stride)
            for c, nd in zip(MAP_CHANNELS, BOXES_PER_LOCATION))
        for block in (*self.additional_blocks, *self.loc, *self.conf):
            for p in block.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    def feature_maps(self, x: torch.Tensor, last_needed: int = 5) -> list[torch.Tensor]:
        """The 6 feature maps (only the first ``last_needed + 1`` are computed)."""
        maps = [self.model(x)]
        for block in self.additional_blocks[:last_needed]:
            maps.append(block(maps[-1]))
        return maps

    def forward(self, x: torch.Tensor, mask: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the detector on a normalized batch.

        Args:
            x: Tensor[N, 3, S, S], normalized.
            mask: 6 values of 0/1; a 0 skips that map's heads (and trailing extra blocks).

        Returns:
            locs Tensor[N, 4, B] and confs Tensor[N, num_classes, B], B = boxes of the kept maps,
            in order map, box shape, row, column.
        """
        mask = list(mask) if mask is not None else [1] * len(self.loc)
        last = max(i for i, m in enumerate(mask) if m)
        maps = self.feature_maps(x, last)
        n = x.shape[0]
        locs, confs = [], []
        for i, feat in enumerate(maps):
            if not mask[i]:
                continue
            locs.append(self.loc[i](feat).reshape(n, 4, -1))
            confs.append(self.conf[i](feat).reshape(n, self.num_classes, -1))
        return torch.cat(locs, 2), torch.cat(confs, 2)
