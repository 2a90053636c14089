"""PyTorchBackend: loading, the predict contract, input checks, batch invariance, CUDA when present."""
import pytest
import torch

from backends.model_config import ModelConfig
from backends.pytorch.backend import PyTorchBackend
from backends.ssd.model import SSDResNet
from backends.ssd.normalize import MEAN_RGB, STD_RGB

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cfg(**kw):
    base = dict(backbone="resnet18", num_classes=4, image_size=(257, 300), use_filter=True, precision="fp32")
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="module")
def backend():
    b = PyTorchBackend(cfg(), device="cpu")
    b.load()
    return b


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    images = {s: torch.randint(0, 256, (3, 3, s, s), dtype=torch.uint8, generator=g) for s in (257, 300)}
    return images, torch.tensor([[480, 640], [300, 300], [640, 427]])


def test_attributes(backend):
    assert backend.name == "pytorch" and backend.sizes == (257, 300) and backend.device.type == "cpu"
    assert PyTorchBackend(cfg(image_size=(257, 257)), device="cpu").sizes == (257,)


def test_predict_contract(backend, batch):
    dets = backend.predict(*batch)
    assert len(dets) == 3
    for d in dets:
        assert d.dtype == torch.float32 and d.device.type == "cpu" and d.dim() == 2 and d.shape[1] == 6
        assert 0 < d.shape[0] <= 200
        assert torch.all((d[:, :4] >= 0) & (d[:, :4] <= 1))
        assert torch.all(d[:, 0] <= d[:, 2]) and torch.all(d[:, 1] <= d[:, 3])
        assert torch.all(d[:, 4] > 0.05) and torch.all(d[:-1, 4] >= d[1:, 4])
        labels = d[:, 5]
        assert torch.all(labels == labels.round()) and labels.min() >= 1 and labels.max() <= 3


def test_normalization_is_imagenet_mean_std(backend, batch):
    images, hw = batch
    mean, std = torch.tensor(MEAN_RGB).view(1, 3, 1, 1), torch.tensor(STD_RGB).view(1, 3, 1, 1)
    manual = {s: ((v.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
              for s, v in images.items()}
    torch.testing.assert_close(backend._normalize(images[257], 257, 3), manual[257])
    with torch.no_grad():
        want = backend.detector.detect({s: v[:1] for s, v in manual.items()}, hw[:1])
    for a, b in zip(backend.predict({s: v[:1] for s, v in images.items()}, hw[:1]), want):
        assert a.shape == b.shape and torch.equal(a[:, 5], b[:, 5])
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_image_alone_or_in_a_batch_gives_the_same_detections(backend, batch):
    images, hw = batch
    together = backend.predict(images, hw)
    for i in range(3):
        alone = backend.predict({s: v[i:i + 1] for s, v in images.items()}, hw[i:i + 1])[0]
        assert alone.shape == together[i].shape and torch.equal(alone[:, 5], together[i][:, 5])
        torch.testing.assert_close(alone, together[i], rtol=0, atol=1e-5)


def test_bad_inputs_are_named(backend, batch):
    images, hw = batch
    with pytest.raises(ValueError, match=r"no images given for size\(s\) \[300\]"):
        backend.predict({257: images[257]}, hw)
    with pytest.raises(ValueError, match=r"must be uint8 \[B, 3, 257, 257\], got float32"):
        backend.predict({257: images[257].float(), 300: images[300]}, hw)
    with pytest.raises(ValueError, match="has 3 images but image_hw has 2 rows"):
        backend.predict(images, hw[:2])
    with pytest.raises(ValueError, match=r"image_hw must be \[B, 2\]"):
        backend.predict(images, hw[:, 0])
    with pytest.raises(RuntimeError, match="before load"):
        PyTorchBackend(cfg(), device="cpu").predict(images, hw)


def test_random_weights_are_seeded_and_warmup_runs():
    a = PyTorchBackend(cfg(image_size=(257, 257), channels_last=False), device="cpu")
    a.load()
    a.warmup()
    torch.manual_seed(123)
    b = SSDResNet(4, "resnet18")
    torch.manual_seed(0)
    c = SSDResNet(4, "resnet18")
    sa, sb, sc = a.model.state_dict(), b.state_dict(), c.state_dict()
    assert torch.equal(sa["loc.0.weight"], sc["loc.0.weight"]) and not torch.equal(sa["loc.0.weight"], sb["loc.0.weight"])


def test_checkpoint_from_config_is_loaded(tmp_path):
    torch.manual_seed(5)
    source = SSDResNet(4, "resnet18").eval()
    torch.save({"model": {"module." + k: v.half() if v.is_floating_point() else v
                           for k, v in source.state_dict().items()}}, tmp_path / "m.pt")
    b = PyTorchBackend(cfg(image_size=(257, 257), checkpoint=str(tmp_path / "m.pt")), device="cpu")
    b.load()
    assert b.checkpoint_info["prefix"] == "module." and b.checkpoint_info["dtypes"] == ["float16", "int64"]
    torch.testing.assert_close(b.model.state_dict()["conf.2.weight"], source.state_dict()["conf.2.weight"].half().float())


def test_cuda_requested_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        PyTorchBackend(cfg(), device="cuda")


@CUDA
@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_cuda_matches_cpu_top_detections(backend, batch, precision):
    gpu = PyTorchBackend(cfg(precision=precision), device="cuda")
    gpu.load()
    gpu.warmup()
    images, hw = batch
    pinned = {s: v.pin_memory() for s, v in images.items()}
    got = gpu.predict(pinned, hw)
    want = backend.predict(images, hw)
    for g, w in zip(got, want):
        assert g.device.type == "cpu" and g.dtype == torch.float32
        assert g.shape[0] > 0
        # the best detection agrees in label and box
        assert g[0, 5] == w[0, 5]
        torch.testing.assert_close(g[0, :4], w[0, :4], rtol=0, atol=2e-2)
