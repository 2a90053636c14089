"""bf16 and fp16 networks give the same top detections as fp32 (random weights, seed 0)."""

import pytest
import torch

from backends.model_config import ModelConfig
from backends.pytorch.backend import PyTorchBackend
from tests.tiny_models import SIZE, tiny_backend, tiny_inputs


def make_backend(precision):
    return tiny_backend(precision=precision, channels_last=True)


@pytest.fixture(scope="module")
def inputs():
    return tiny_inputs()


@pytest.fixture(scope="module")
def reference(inputs):
    return make_backend("fp32").predict(*inputs)


def iou_xyxy(a, b):
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    return inter / ((a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1) - inter)


@pytest.mark.parametrize("precision,score_tol", [("bf16", 0.05), ("fp16", 0.01)])
def test_low_precision_agrees_on_top_detections(inputs, reference, precision, score_tol):
    backend = make_backend(precision)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    # BatchNorm is folded into the convolutions, so every parameter is in the network's precision
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backend.model.modules())
    assert {p.dtype for p in backend.model.parameters()} == {dtype}
    got = backend.predict(*inputs)
    for ref, det in zip(reference, got):
        assert det.dtype == torch.float32
        top = ref[:10]
        assert top.shape[0] == 10 and top[0, 4] > 0.5          # real detections exist
        # every top fp32 detection has a same-label low-precision twin: close box and score
        for row in top:
            same = det[det[:, 5] == row[5]]
            assert same.shape[0] > 0
            ious = iou_xyxy(row[None, :4].expand(same.shape[0], 4), same[:, :4])
            best = ious.argmax()
            assert ious[best] > 0.9
            assert abs(same[best, 4] - row[4]) < score_tol


def test_fp16_on_cpu_warns_and_runs(inputs):
    cfg = ModelConfig(backbone="resnet18", num_classes=5, image_size=(SIZE, SIZE), precision="fp16")
    backend = PyTorchBackend(cfg, device="cpu")
    with pytest.warns(RuntimeWarning, match="fp16 on the CPU"):
        backend.load()
    assert backend.model.loc[0].weight.dtype == torch.float16
