"""Progress a user can read: a bar with total and time left on a terminal, log lines when redirected."""
from __future__ import annotations

import io
import logging
import math

import numpy as np
import pytest

import ground.progress as progress
import run
from harness.run.run_progress import planned_samples
from harness.settings.config import RunConfig
from harness.settings.loadgen import make_test_settings
from ground.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_bar_shows_the_total_and_the_time_left():
    out = Terminal()
    with Progress("Offline performance", total=1100, unit="samples", stream=out, floor_s=lambda e: 30.0) as bar:
        bar.set(100)
        bar._bar.refresh()
    text = out.getvalue()
    assert "100/1100" in text and "at least 30 s left" in text


def test_without_a_terminal_a_line_is_logged_every_few_seconds_and_at_the_end(caplog, monkeypatch):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="harness")
    with Progress("Server performance", total=200, unit="samples", stream=io.StringIO(),
                  floor_s=lambda e: 60.0) as bar:
        bar.set(50)
        bar.set(100)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("Server performance: 50/200 samples (25%), ") and "about 60 s left" in lines[0]
    assert lines[-1].startswith("Server performance: 100 samples in ")


@pytest.mark.parametrize("scenario, planned", [
    ("Offline", max(256, int(1.1 * 0.5 * 2000))),       # one query: max(min_query_count, 1.1 x duration x QPS)
    ("Server", max(100, math.ceil(0.5 * 300))),           # queries: max(min_query_count, duration x target QPS)
    ("SingleStream", max(100, math.ceil(0.5 / 0.002))),   # before any sample: duration / expected latency
    ("MultiStream", 8 * max(662, math.ceil(0.5 / 0.004))),  # min_query_count 662 for early stopping
])
def test_the_planned_samples_follow_loadgens_rules(fast_conf, scenario, planned):
    run_config = RunConfig(offline_expected_qps=2000, server_target_qps=300, singlestream_expected_latency_ms=2,
                           multistream_expected_latency_ms=4)
    settings = make_test_settings(fast_conf, scenario, "performance", run_config)
    total, left = planned_samples(settings, 0.1, 0)
    assert total == planned
    assert left == (None if scenario == "Offline" else pytest.approx(0.4))
    if scenario == "SingleStream":      # then from the measured rate: 50 samples in 0.1 s, 0.4 s to go
        assert planned_samples(settings, 0.1, 50)[0] == max(100, 50 + 200)


def test_a_redirected_run_logs_its_progress(synthetic_coco, tmp_path, caplog, monkeypatch, capsys):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.2)
    conf = tmp_path / "two_seconds.conf"
    conf.write_text("ssd-resnet34.*.performance_sample_count_override = 8\nssd-resnet34.*.min_duration = 1500\n"
                    "ssd-resnet34.*.min_query_count = 10\nssd-resnet34.Server.target_latency = 100\n")
    caplog.set_level(logging.INFO, logger="harness")
    rc = run.main(["--scenario", "Server", "--mode", "performance", "--backend", "null", "--server-target-qps", "40",
                   "--data", str(synthetic_coco), "--cache-dir", str(tmp_path / "c"), "--output", str(tmp_path / "o"),
                   "--user-conf", str(conf), "--image-size", "257", "257"])
    assert rc == 0, capsys.readouterr().err
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Server performance: ")]
    assert any(line.startswith("Server performance: ") and "/60 samples (" in line and "left" in line
               for line in lines), lines


def test_run_py_without_arguments_points_to_the_demo_and_help(capsys):
    assert run.main([]) == 2
    err = capsys.readouterr().err
    assert "python run.py demo" in err and "python run.py --help" in err and len(err.strip().splitlines()) == 1


def test_the_checkpoint_line_is_readable(caplog):
    from backends.model_config import ModelConfig
    from backends.pytorch.backend import PyTorchBackend
    caplog.set_level(logging.INFO)
    cfg = ModelConfig(checkpoint="models/demo_ssd18_300.pt", backbone="resnet18", num_classes=7)
    PyTorchBackend(cfg, device="cpu").load()
    (line,) = [r.getMessage() for r in caplog.records if "loaded checkpoint" in r.getMessage()]
    assert "{" not in line and line == ("loaded checkpoint models/demo_ssd18_300.pt: resnet18 backbone, 7 classes, "
                                        "trained at 300, float16 weights (dict['model'])")


def _wait_for(caplog, prefix: str, count: int, limit_s: float = 30.0) -> list[str]:
    """The log lines starting with ``prefix``, once there are ``count`` of them (or ``limit_s`` has passed)."""
    import time
    end = time.monotonic() + limit_s
    while True:
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]
        if len(lines) >= count or time.monotonic() > end:
            return lines


def test_without_a_terminal_a_heartbeat_line_comes_while_no_item_completes(caplog):
    caplog.set_level(logging.INFO, logger="harness")
    bar = Progress("Offline performance", total=64, unit="samples", stream=io.StringIO(), every_s=0.05)
    try:                                            # a first batch that takes minutes: no update at all
        lines = _wait_for(caplog, "Offline performance: 0/64 samples (0%), ", 2)
    finally:
        bar.close()
    assert len(lines) >= 2, lines
    closed = len(caplog.records)
    import time
    time.sleep(0.2)
    assert len(caplog.records) == closed            # closed: no more lines


def test_an_interrupted_runs_last_line_counts_the_samples_computed(caplog):
    """8 of 200 computed, then Ctrl-C answers the other 192 empty: the last line says 8, and why the rest are empty."""
    import threading
    import types

    from harness.run.run_progress import show_progress
    from harness.sut.completion import Completer, Sample
    caplog.set_level(logging.INFO, logger="harness")
    completer = Completer(complete_fn=lambda responses: None, response_fn=lambda *a: a)
    samples = [Sample(i, i) for i in range(200)]
    completer.register(samples)
    completer.complete(samples[:8], [np.zeros((1, 7), np.float32)] * 8)
    completer.close("interrupted", "the run was interrupted (Ctrl-C)")
    done = threading.Event()
    done.set()
    show_progress(types.SimpleNamespace(completer=completer), done, "Offline accuracy", 200, None)
    last = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Offline accuracy: ")][-1]
    assert last.startswith("Offline accuracy: 8 samples in "), last
    assert last.endswith("; 192 more answered empty (the run was interrupted (Ctrl-C))"), last


def test_evaluate_writes_lines_not_a_bar_when_redirected(capfd, caplog, monkeypatch):
    from backends.null import NullBackend
    from backends.model_config import ModelConfig
    from harness.run.evaluate import predict_all
    from qsl.memory_qsl import MemoryQSL
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="harness")
    records = predict_all(NullBackend(ModelConfig(image_size=(32, 32))), MemoryQSL(20), batch_size=8)
    assert sorted(records) == list(range(20))
    assert "\r" not in capfd.readouterr().err                   # tqdm's bar would redraw with carriage returns
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluate: ")]
    assert lines[0].startswith("evaluate: 8/20 images (40%), ") and lines[-1].startswith("evaluate: 20 images in ")
