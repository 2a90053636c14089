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


def test_whole_pickled_module_needs_trust(tmp_path, caplog):
    path = tmp_path / "resnet34-ssd1200.pytorch"
    original = _pickle_whole_module(path, "ssd1200")
    target = SSDResNet(7, "resnet18", "ssd1200")
    msg = expect_error(path, target, "is a whole pickled nn.Module (class ssd_r34_gone.SSD_R34), not a state dict",
                       "If you trust its source, pass --trust-pickle")
    assert "config file" not in msg and "trust_pickle = true" not in msg   # only the flag may allow it
    with caplog.at_level("WARNING"):
        info = load_checkpoint(path, target, trust_pickle=True)
    assert info["container"] == "pickled module SSD_R34" and info["variant"] == "ssd1200"
    assert f"unpickling {path} with --trust-pickle: this runs code from the file" in caplog.text
    for k, v in original.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k
    expect_error(path, SSDResNet(7, "resnet18"), "looks like the ssd1200 variant", trust_pickle=True)


def test_read_state_dict_strips_the_prefix(tmp_path, source):
    torch.save({"module.1." + k: v for k, v in source.state_dict().items()}, tmp_path / "ddp.pt")
    state, info = read_state_dict(tmp_path / "ddp.pt")
    assert info["prefix"] == "module.1." and "loc.0.weight" in state


def test_trust_pickle_is_advised_only_for_a_torch_save_that_needs_it(tmp_path, source, target):
    import argparse
    import pickle
    import random
    rand = tmp_path / "random.pt"
    rand.write_bytes(b"\x80" + random.Random(0).randbytes(4000))
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))
    for path in (rand, tmp_path / "plain.pkl"):   # neither is a PyTorch file, with or without trust
        for trust in (False, True):
            msg = expect_error(path, target, "is not a PyTorch checkpoint", trust_pickle=trust)
            assert "--trust-pickle" not in msg
    # A legacy (non-zip) save of a whole module is recognised as one too.
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), tmp_path / "legacy.pt",
               _use_new_zipfile_serialization=False)
    expect_error(tmp_path / "legacy.pt", target, "whole pickled nn.Module (class torch.nn.modules.container.Sequential)",
                 "pass --trust-pickle")
    # Weights saved beside the training arguments: the flag reads them, so it is advised.
    torch.save({"model": source.state_dict(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "args.pt")
    expect_error(tmp_path / "args.pt", target, "holds pickled Python objects besides its tensors (first: "
                 "argparse.Namespace)", "pass --trust-pickle")
    assert load_checkpoint(tmp_path / "args.pt", target, trust_pickle=True)["container"] == "dict['model']"
    # Objects without tensors are no checkpoint, whatever the flag would do.
    torch.save({"args": argparse.Namespace(lr=0.1)}, tmp_path / "no_tensors.pt")
    msg = expect_error(tmp_path / "no_tensors.pt", target, "is not a checkpoint: it holds no tensors")
    assert "--trust-pickle" not in msg
