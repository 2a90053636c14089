"""BatchNorm folded into the convolutions (backends/ssd/fold.py): the same network within fp32 rounding."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from backends.ssd.fold import fold_batchnorm, fold_conv_bn
from backends.ssd.model import SSDResNet


@pytest.fixture(scope="module")
def unfolded():
    torch.manual_seed(0)
    model = SSDResNet(5, "resnet18").eval()
    with torch.no_grad():   # statistics far from the identity, so a wrong fold shows
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def test_folded_network_equals_the_unfolded_one_within_fp32_rounding(unfolded):
    folded = copy.deepcopy(unfolded)
    # resnet18 cut: stem 1, layer1 2 blocks x 2, layer2 and layer3 each 2 x 2 + downsample 1
    assert fold_batchnorm(folded) == 1 + 2 * 2 + (2 * 2 + 1) + (2 * 2 + 1)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    # BatchNorm lives in the backbone only: compare its output (all of the folded layers) on a small input
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    exact = copy.deepcopy(unfolded.model).double()
    with torch.no_grad():
        want = exact(x.double())
        for a, b, w in zip(unfolded.model(x), folded.model(x), want):
            err_unfolded = (a.double() - w).abs().max()
            err_folded = (b.double() - w).abs().max()
            # the folded fp32 network is as close to the float64 truth as the unfolded fp32 one
            assert err_folded <= 2 * err_unfolded + 1e-6, (err_folded, err_unfolded)
            assert (a - b).abs().max() <= 1e-5 * w.abs().max()


def test_fold_arithmetic_on_one_channel():
    conv = nn.Conv2d(1, 1, 1, bias=True)
    bn = nn.BatchNorm2d(1).eval()
    with torch.no_grad():
        conv.weight.fill_(2.0)
        conv.bias.fill_(1.0)
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(4.0 - bn.eps)     # sqrt(var + eps) = 2
        bn.weight.fill_(5.0)
        bn.bias.fill_(7.0)
    fold_conv_bn(conv, bn)
    assert conv.weight.item() == 2.0 * 5.0 / 2.0                   # w g / sqrt(v + eps) = 5
    assert conv.bias.item() == (1.0 - 3.0) * 5.0 / 2.0 + 7.0      # (b - m) g / sqrt(v + eps) + beta = 2


def test_a_convolution_without_bias_gains_one():
    conv, bn = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4).eval()
    fold_conv_bn(conv, bn)
    assert conv.bias is not None and conv.bias.shape == (4,)


def test_refuses_a_model_in_training_mode_or_an_unrecognized_batchnorm():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)))
    lone = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4)).eval()
    with pytest.raises(ValueError, match="left unfolded"):
        fold_batchnorm(lone)
