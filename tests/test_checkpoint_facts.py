"""What a checkpoint says about itself is used: no flags needed for the shipped model, contradictions named."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import run
from backends.ssd.checkpoint import CheckpointError, read_facts
from backends.ssd.model import SSDResNet
from harness.settings.config import load_config
from harness.settings.from_checkpoint import CheckpointMismatch, apply_checkpoint

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo_ssd18_300.pt"


@pytest.fixture(scope="module")
def trained_at_700(tmp_path_factory) -> Path:
    """A 7-class resnet18 SSD container recording only its training size, 700."""
    path = tmp_path_factory.mktemp("ckpt") / "m700.pt"
    torch.save({"model": SSDResNet(7, "resnet18").state_dict(), "image_size": 700}, path)
    return path


def _config(ckpt: Path, **model):
    return load_config(None, {"model": {"checkpoint": str(ckpt), **model}})


def test_the_demo_checkpoint_says_what_it_is():
    facts = read_facts(DEMO)
    assert (facts.backbone, facts.num_classes, facts.training_size, facts.variant) == ("resnet18", 7, 300, None)
    assert facts.source("backbone") == "recorded in the file"


def test_its_facts_fill_in_what_was_not_given(caplog):
    caplog.set_level(logging.INFO, logger="harness")
    model = apply_checkpoint(_config(DEMO), {}).model
    assert (model.backbone, model.num_classes, model.image_size) == ("resnet18", 7, (300, 300))
    assert "using its backbone = resnet18, num_classes = 7" in caplog.text
    given = apply_checkpoint(_config(DEMO, image_size=[300, 600]), {"image_size": "--image-size 300 600"}).model
    assert given.image_size == (300, 600)                      # two-scale sizes are the user's to choose


@pytest.mark.parametrize("key, value, flag", [("num_classes", 81, "--num-classes 81"),
                                              ("backbone", "resnet34", "--backbone resnet34")])
def test_a_given_structure_that_contradicts_the_file_is_an_error_naming_both(key, value, flag):
    with pytest.raises(CheckpointMismatch) as e:
        apply_checkpoint(_config(DEMO, **{key: value}), {key: flag})
    assert f"holds a model with {key} = " in str(e.value) and f"and {flag} contradicts it" in str(e.value)


def test_a_box_scale_the_model_was_not_trained_with_is_warned_about(caplog, trained_at_700):
    apply_checkpoint(_config(DEMO, dboxes_scale=2.0), {"dboxes_scale": "--dboxes-scale 2.0"})
    assert "--dboxes-scale 2.0 gives default boxes 2 times the size of those" in caplog.text
    assert "trained at 300x300, recorded in the file" in caplog.text
    caplog.clear()
    model = apply_checkpoint(_config(trained_at_700), {}).model        # scale left at 1 for a 700 model
    assert model.image_size == (700, 700)
    assert "the default dboxes_scale 1 gives default boxes 0.43 times" in caplog.text
    assert "pass --dboxes-scale 2.3" in caplog.text
    caplog.clear()
    apply_checkpoint(_config(trained_at_700, dboxes_scale=2.0), {"dboxes_scale": "--dboxes-scale 2"})
    assert "dboxes_scale" not in caplog.text                           # the MLPerf model700 convention


def test_a_file_whose_record_contradicts_its_tensors_is_refused(tmp_path):
    path = tmp_path / "liar.pt"
    torch.save({"model": SSDResNet(7, "resnet18").state_dict(), "num_classes": 81}, path)
    with pytest.raises(CheckpointError, match="records num_classes = 81 but its tensors are those of a 7"):
        read_facts(path)


def test_model_alone_runs_the_shipped_detector(capsys, synthetic_coco, tmp_path):
    rc = run.main(["evaluate", "--data", str(synthetic_coco), "--cache-dir", str(tmp_path / "c"), "--max-images", "2",
                   "--model", str(DEMO), "--threads", "1"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.startswith("mAP=")


def test_without_a_checkpoint_random_weights_must_be_asked_for(capsys, synthetic_coco, tmp_path):
    argv = ["--data", str(synthetic_coco), "--output", str(tmp_path / "o"), "--backbone", "resnet18"]
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    assert "no checkpoint given: pass --model CKPT" in err and "--random-weights" in err
    assert run.main([*argv, "--model", str(DEMO), "--random-weights"]) == 2
    assert "contradict each other" in capsys.readouterr().err
