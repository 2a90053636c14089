"""The README's main command path, end to end on a few images with the shipped demo checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backends.ssd.checkpoint import load_checkpoint
from backends.ssd.model import SSDResNet
from harness.demo import command as demo

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "models" / "demo_ssd18_300.pt"

# LoadGen settings small enough for a test: the performance run computes 8 samples (its query is
# max(min_query_count, 1.1 x 0.2 s x the demo's expected 5 samples/s)), whatever the CPU's speed.
TINY_CONF = """\
ssd-resnet34.*.performance_sample_count_override = 64
ssd-resnet34.Offline.min_duration = 200
ssd-resnet34.Offline.min_query_count = 8
"""


def test_shipped_checkpoint_is_an_mlperf_container_that_loads_through_the_user_loader():
    raw = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    assert set(raw) >= {"model", "label_map"}
    assert raw["label_map"] == {1: 1, 2: 3, 3: 13, 4: 37, 5: 44, 6: 74}   # label i -> i-th sorted category id
    assert all(v.dtype == torch.float16 for v in raw["model"].values() if v.is_floating_point())
    assert CHECKPOINT.stat().st_size < 20 * 2**20
    info = load_checkpoint(CHECKPOINT, SSDResNet(num_classes=7, backbone="resnet18"))
    assert info["num_classes"] == 7 and info["backbone"] == "resnet18"


def test_demo_runs_end_to_end_with_a_real_map_and_pictures(tmp_path, capsys):
    conf = tmp_path / "tiny.conf"
    conf.write_text(TINY_CONF)
    out, data = tmp_path / "out", tmp_path / "data"
    code = demo.main(["--output", str(out), "--data", str(data), "--num-images", "12", "--user-conf", str(conf)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    acc = out / "demo" / "ssd-resnet34" / "Offline" / "accuracy"
    first = (acc / "accuracy.txt").read_text().splitlines()[0]
    assert first.startswith("mAP=")
    m_ap = float(first[4:-1]) / 100
    # The detector scores 0.66 on 500 held-out images; 12 images vary, but a broken path gives ~0.
    assert 0.35 < m_ap <= 1.0, first
    assert "result: VALID" in printed and "failed samples: 0" in printed
    for png in (out / "detections.png", out / "latency_Offline.png"):
        assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "demo" / "ssd-resnet34" / "Offline" / "report.md").read_text()
    assert "detections.png" in report and "mAP" in report
    status = json.loads((acc / "run_status.json").read_text())["environment"]   # the precision auto chose, and why
    assert status["precision"] in ("bf16", "fp32") and status["precision_reason"].startswith("auto: ")
    assert f"precision={status['precision']} (requested auto)" in report
    assert f"precision {status['precision']} ({status['precision_reason']})" in report
    assert f"precision {status['precision']} (auto: " in printed
    config = json.loads((acc / "config.json").read_text())
    assert config["model"]["image_size"] == [300, 600] and config["model"]["backbone"] == "resnet18"


def _digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_demo_never_overwrites_a_data_set_it_did_not_generate(tmp_path, capsys):
    import run
    from qsl.synthetic.dataset import make_synthetic_coco
    own = tmp_path / "own"
    make_synthetic_coco(own, 2, seed=7, min_size=64, max_size=96)        # someone's data: not the demo's set
    ann = own / "annotations" / "instances_val2017.json"
    doc = json.loads(ann.read_text())
    doc["info"]["description"] = "MY OWN DATA"
    ann.write_text(json.dumps(doc))
    before = _digest(own)
    assert run.main(["demo", "--data", str(own), "--num-images", "3", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"--data {own} holds files the demo did not generate" in err and "give a new or empty folder" in err
    assert _digest(own) == before                                           # nothing lost
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "notes.txt").write_text("mine")                              # no annotation file at all
    with pytest.raises(demo.DemoDataError, match="holds files the demo did not generate"):
        demo.ensure_demo_data(loose, 2)
    assert [p.name for p in loose.iterdir()] == ["notes.txt"]


def test_demo_data_is_generated_in_an_empty_folder_and_regenerated_only_when_it_is_the_demos(tmp_path):
    empty = tmp_path / "d"
    empty.mkdir()
    ann = demo.ensure_demo_data(empty, 2)
    assert len(json.loads(ann.read_text())["images"]) == 2
    first = ann.stat().st_mtime_ns
    assert demo.ensure_demo_data(empty, 2) == ann and ann.stat().st_mtime_ns == first   # same size: kept
    demo.ensure_demo_data(empty, 3)                                                    # the demo's own set
    assert len(json.loads(ann.read_text())["images"]) == 3
    for bad in (0, -3):
        with pytest.raises(demo.DemoDataError, match=f"--num-images must be at least 1, got {bad}"):
            demo.ensure_demo_data(tmp_path / "new", bad)
    assert not (tmp_path / "new").exists()


def test_a_copied_demo_config_finds_the_shipped_checkpoint_and_precision_is_a_flag(tmp_path, monkeypatch):
    copy = tmp_path / "elsewhere" / "mine.toml"
    copy.parent.mkdir()
    copy.write_text((ROOT / "configs" / "demo.toml").read_text())
    monkeypatch.chdir(tmp_path)                                  # neither the project folder nor the copy's
    args = demo.demo_parser().parse_args(["--config", str(copy), "--data", "d", "--precision", "fp32"])
    config = demo.demo_config(args)
    assert Path(config.model.checkpoint).resolve() == CHECKPOINT and config.model.precision == "fp32"
    config = demo.demo_config(demo.demo_parser().parse_args(["--config", str(copy), "--data", "d"]))
    assert config.model.precision == "auto"                      # the shipped config leaves it to the machine


def test_a_demo_config_whose_checkpoint_is_nowhere_says_where_it_looked_before_anything_runs(tmp_path, capsys,
                                                                                           monkeypatch):
    import run
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text((ROOT / "configs" / "demo.toml").read_text().replace("models/demo_ssd18_300.pt", "models/gone.pt"))
    assert run.main(["demo", "--config", str(bad), "--data", "d", "--output", "o"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: [model] checkpoint = 'models/gone.pt': checkpoint file not found" in err
    for place in (tmp_path, ROOT):                               # beside the config (= working dir), project folder
        assert str(place / "models" / "gone.pt") in err
    assert not (tmp_path / "d").exists() and not (tmp_path / "o").exists()
