"""The network: checkpoint key names and shapes, real output sizes, masks and box layout."""
import pytest
import torch

from backends.ssd.default_boxes import boxes_per_map, default_boxes
from backends.ssd.model import SSDResNet, feature_sizes
from backends.ssd.two_scale import model_output_boxes


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return SSDResNet(num_classes=5, backbone="resnet18").eval()


def test_resnet34_keys_and_shapes_follow_the_mlperf_checkpoint():
    sd = SSDResNet(81, "resnet34").state_dict()
    assert list(sd["model.layer1.0.weight"].shape) == [64, 3, 7, 7]
    assert list(sd["model.layer2.0.0.conv1.weight"].shape) == [256, 128, 3, 3]
    assert list(sd["additional_blocks.0.2.weight"].shape) == [512, 256, 3, 3]
    assert list(sd["loc.0.weight"].shape) == [4 * 4, 256, 3, 3]
    assert list(sd["conf.0.weight"].shape) == [4 * 81, 256, 3, 3]
    assert "model.layer1.4.2.conv1.weight" in sd and "model.layer1.5.3.conv1.weight" in sd  # 3 + 4 blocks
    assert not any(k.startswith("model.layer3") or "fc." in k for k in sd)


@pytest.mark.parametrize("size", [257, 300])
def test_real_output_counts_equal_default_boxes(small_model, size):
    with torch.no_grad():
        locs, confs = small_model(torch.zeros(1, 3, size, size))
    n = default_boxes(size).shape[0]
    assert locs.shape == (1, 4, n) and confs.shape == (1, 5, n)


@pytest.mark.parametrize("size,variant,expected", [
    (600, "training", 34330), (700, "training", 46742), (1400, "training", 186380), (1200, "ssd1200", 15130)])
def test_shape_propagation_at_large_sizes(size, variant, expected):
    model = SSDResNet(81, "resnet18", variant)
    assert model_output_boxes(model, size, [1] * 6) == expected == sum(boxes_per_map(size, variant))


def test_mask_output_is_the_matching_slices_of_the_full_output(small_model):
    x = torch.randn(2, 3, 257, 257, generator=torch.Generator().manual_seed(0))
    mask = [0, 1, 0, 1, 1, 0]
    with torch.no_grad():
        locs, confs = small_model(x)
        mlocs, mconfs = small_model(x, mask)
    per_map = boxes_per_map(257)
    keep = torch.cat([torch.full((n,), bool(m)) for n, m in zip(per_map, mask)])
    torch.testing.assert_close(mlocs, locs[:, :, keep])
    torch.testing.assert_close(mconfs, confs[:, :, keep])


def test_box_index_layout_is_shape_then_row_then_column(small_model):
    # channel = coord * nd + d, box = d * H * W + y * W + x (no permute, as the checkpoints were trained)
    x = torch.randn(1, 3, 257, 257, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        locs, _ = small_model(x)
        head = small_model.loc[0](small_model.model(x))      # [1, 4 * 4, H, W]
    h = w = feature_sizes(257)[0]
    nd, coord, d, y, xx = 4, 2, 3, 5, 7
    assert locs[0, coord, d * h * w + y * w + xx] == head[0, coord * nd + d, y, xx]
