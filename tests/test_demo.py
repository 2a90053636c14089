"""The README's main command path, end to end on a few images with the shipped demo checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from backends.ssd.checkpoint import load_checkpoint
from backends.ssd.model import SSDResNet
from harness import demo

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "models" / "demo_ssd18_300.pt"

# LoadGen settings small enough for a test: a fraction of a second per run.
TINY_CONF = """\
ssd-resnet34.*.performance_sample_count_override = 64
ssd-resnet34.Offline.min_duration = 200
ssd-resnet34.Offline.min_query_count = 16
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
    config = json.loads((acc / "config.json").read_text())
    assert config["model"]["image_size"] == [300, 600] and config["model"]["backbone"] == "resnet18"
