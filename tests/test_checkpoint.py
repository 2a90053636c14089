"""Checkpoint loading: every container, prefix and dtype, and a clear error for each wrong file."""
import itertools
import sys
import types

import pytest
import torch
import torchvision

from backends.ssd.checkpoint import (
    CheckpointError,
    infer_architecture,
    load_checkpoint,
    read_state_dict,
)
from backends.ssd.model import SSDResNet


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(1)
    model = SSDResNet(7, "resnet18").eval()
    with torch.no_grad():   # non-trivial BatchNorm statistics, so they are checked too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model


@pytest.fixture(scope="module")
def _blank():
    return SSDResNet(7, "resnet18").eval()


@pytest.fixture()
def target(_blank):
    """One model reused, every tensor set to -7 so any tensor a load misses is visible."""
    with torch.no_grad():
        for v in _blank.state_dict().values():
            v.fill_(-7)
    return _blank


# Every container x prefix; the dtype alternates so each container and each prefix is seen in fp16 and fp32.
CASES = [(c, p, (torch.float16, torch.float32)[(i + j) % 2])
         for (i, c), (j, p) in itertools.product(enumerate(["model", "bare"]),
                                                 enumerate(["", "1.", "module.1.", "module."]))]


@pytest.mark.parametrize("container,prefix,dtype", CASES, ids=lambda v: str(v).replace("torch.", "") or "no-prefix")
def test_round_trip(tmp_path, source, target, container, prefix, dtype):
    state = {prefix + k: (v.to(dtype) if v.is_floating_point() else v) for k, v in source.state_dict().items()
             if not k.endswith("num_batches_tracked")}          # old checkpoints lack it
    obj = {"model": state, "label_map": {1: "one"}, "epoch": 3} if container == "model" else state
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    info = load_checkpoint(path, target)
    assert info["prefix"] == prefix
    assert info["container"] == ("dict['model']" if container == "model" else "state dict")
    assert info["num_classes"] == 7 and info["backbone"] == "resnet18"
    # BatchNorm layers of the resnet18 cut: stem 1, layer1 2 blocks x 2, layer2 and layer3 each 2 x 2 + downsample 1
    assert info["missing_num_batches_tracked"] == 1 + 2 * 2 + (2 * 2 + 1) + (2 * 2 + 1)
    got = target.state_dict()
    for k, v in source.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        want = v.to(dtype).to(v.dtype) if v.is_floating_point() else v
        assert got[k].dtype == v.dtype and torch.equal(got[k], want), k


def test_infer_architecture_of_the_demo_model(source):
    assert infer_architecture(source.state_dict()) == {"kind": "ssd", "num_classes": 7, "backbone": "resnet18"}
    big = SSDResNet(81, "resnet34").state_dict()
    assert infer_architecture(big) == {"kind": "ssd", "num_classes": 81, "backbone": "resnet34"}


def expect_error(path, model, *patterns, **kwargs):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, model, **kwargs)
    msg = str(err.value)
    assert str(path) in msg
    for p in patterns:
        assert p in msg, msg
    return msg


def test_missing_empty_directory_and_non_torch_files(tmp_path, target):
    expect_error(tmp_path / "nope.pt", target, "does not exist")
    expect_error(tmp_path, target, "is a directory")
    (tmp_path / "empty.pt").write_bytes(b"")
    expect_error(tmp_path / "empty.pt", target, "empty (0 bytes)")
    (tmp_path / "notes.txt").write_text("hello")
    expect_error(tmp_path / "notes.txt", target, "not a PyTorch file")


def test_corrupt_file(tmp_path, source, target):
    path = tmp_path / "good.pt"
    torch.save({"model": source.state_dict()}, path)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    expect_error(tmp_path / "cut.pt", target, "not a readable PyTorch checkpoint")


def test_torchvision_classifier_is_named(tmp_path, target):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "rn18.pth")
    msg = expect_error(tmp_path / "rn18.pth", target, "torchvision classification model", "missing key(s)",
                       "unexpected key(s)", "and ")
    assert "fc.weight" not in msg.split("unexpected")[0]      # lists are summarised, not dumped


def test_wrong_class_count_and_backbone_are_named(tmp_path, source):
    torch.save({"model": source.state_dict()}, tmp_path / "demo.pt")
    expect_error(tmp_path / "demo.pt", SSDResNet(5, "resnet18"), "looks like a 7-class model, config says 5 classes",
                 "conf.0.weight: file [28, 256, 3, 3] vs model [20, 256, 3, 3]")
    expect_error(tmp_path / "demo.pt", SSDResNet(7, "resnet34"), "looks like a resnet18 backbone", "missing key(s)")


def test_containers_without_weights(tmp_path, target):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    expect_error(tmp_path / "list.pt", target, "holds a list")
    torch.save({"epoch": 3}, tmp_path / "meta.pt")
    expect_error(tmp_path / "meta.pt", target, "holds no tensors")


def _pickle_whole_module(path, variant):
    """Save a whole module whose class lives in a module that is gone when the file is read."""
    fake = types.ModuleType("ssd_r34_gone")
    cls = type("SSD_R34", (SSDResNet,), {"__module__": "ssd_r34_gone"})
    fake.SSD_R34 = cls
    sys.modules["ssd_r34_gone"] = fake
    try:
        torch.manual_seed(3)
        model = cls(7, "resnet18", variant).eval()
        torch.save(model, path)
    finally:
        del sys.modules["ssd_r34_gone"]
    return model


def test_whole_pickled_module_needs_trust(tmp_path):
    path = tmp_path / "resnet34-ssd1200.pytorch"
    original = _pickle_whole_module(path, "ssd1200")
    target = SSDResNet(7, "resnet18", "ssd1200")
    expect_error(path, target, "--trust-pickle", "trust_pickle = true in [model]", "ssd_r34_gone.SSD_R34")
    info = load_checkpoint(path, target, trust_pickle=True)
    assert info["container"] == "pickled module SSD_R34" and info["variant"] == "ssd1200"
    for k, v in original.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k
    expect_error(path, SSDResNet(7, "resnet18"), "looks like the ssd1200 variant", trust_pickle=True)


def test_read_state_dict_strips_the_prefix(tmp_path, source):
    torch.save({"module.1." + k: v for k, v in source.state_dict().items()}, tmp_path / "ddp.pt")
    state, info = read_state_dict(tmp_path / "ddp.pt")
    assert info["prefix"] == "module.1." and "loc.0.weight" in state
