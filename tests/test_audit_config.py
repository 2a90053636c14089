"""audit.config: each audit's own file, placed for its run only, removed however the run ends, refused when stray."""
from __future__ import annotations

import _thread
from pathlib import Path

import pytest

from backends.null import NullBackend
from harness.compliance.audit import (
    AuditConfigError,
    audit_config_text,
    placed_audit_config,
)
from harness.run.benchmark import run_benchmark
from harness.run.dataset import Dataset
from harness.run.loadgen_thread import Interrupted
from harness.settings.config import load_config
from qsl.memory_qsl import MemoryQSL
from tests.test_harness_scenarios import HINTS


def _config(tmp_path, conf, scenario="Offline", mode="submission"):
    return load_config(None, {"run": {"scenario": scenario, "mode": mode, "user_conf": str(conf),
                                      "output_dir": str(tmp_path / "out"), **HINTS}})


def test_audit_config_is_placed_for_the_block_only(tmp_path):
    assert "*.*.accuracy_log_sampling_target = 256" in audit_config_text("TEST01")
    assert "*.*.performance_issue_same = 1" in audit_config_text("TEST04")
    # compliance/nvidia at v2.0: TEST04-A issues each loaded sample once, TEST04-B (= later TEST04) one sample
    # over and over; TEST05 is a performance run whose seeds LoadGen takes from TestSettings (test_rules.py).
    assert "*.*.performance_issue_unique = 1\n*.*.performance_issue_same = 0" in audit_config_text("TEST04-A")
    assert audit_config_text("TEST04-B") == audit_config_text("TEST04")
    assert "*.*.mode = 2" in audit_config_text("TEST05") and "rng_seed =" not in audit_config_text("TEST05")
    with placed_audit_config("TEST04", tmp_path) as path:
        assert path == tmp_path / "audit.config" and "performance_issue_same_index = 3" in path.read_text()
    assert not path.exists()
    with pytest.raises(KeyboardInterrupt):
        with placed_audit_config("TEST01", tmp_path):
            raise KeyboardInterrupt
    assert not (tmp_path / "audit.config").exists()


def test_stray_audit_config_refuses_every_run(tmp_path, fast_conf, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "audit.config").write_text("*.*.mode = 2\n")
    for mode in ("performance", "submission"):
        with pytest.raises(AuditConfigError, match=r"audit.config.*silently change this run's settings. Remove it"):
            run_benchmark(_config(tmp_path, fast_conf, mode=mode), NullBackend(), Dataset(MemoryQSL(20)))
    assert not (tmp_path / "out").exists()          # refused before any folder or LoadGen run
    with pytest.raises(AuditConfigError):
        with placed_audit_config("TEST01", tmp_path):
            pass
    assert (tmp_path / "audit.config").read_text() == "*.*.mode = 2\n"   # never overwritten


class InterruptDuringAudit(NullBackend):
    """Presses Ctrl-C (in the main thread) while the audit.config is in place."""

    def predict(self, images, image_hw):
        if Path("audit.config").exists() and not getattr(self, "pressed", False):
            self.pressed = True
            _thread.interrupt_main()
        return super().predict(images, image_hw)


def test_ctrl_c_during_an_audit_removes_its_config(tmp_path, fast_conf, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Interrupted) as e:
        run_benchmark(_config(tmp_path, fast_conf), InterruptDuringAudit(latency_ms=1.0), Dataset(MemoryQSL(64)))
    assert e.value.finished and e.value.result.interrupted
    assert [r.mode for r in e.value.result.runs] == ["accuracy", "performance"]
    assert not (tmp_path / "audit.config").exists()
    assert (tmp_path / "out/default/ssd-resnet34/Offline/report.md").is_file()


def test_an_audit_config_of_a_running_compliance_run_is_named_as_such(tmp_path):
    import os
    import subprocess
    import sys

    from harness.compliance.audit import check_no_stray_audit_config
    with placed_audit_config("TEST01", tmp_path) as path:
        assert path.read_text().startswith(f"# placed by process {os.getpid()} for TEST01")
        with pytest.raises(AuditConfigError, match=rf"belongs to a compliance run \(process {os.getpid()}\)"):
            check_no_stray_audit_config(tmp_path)
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "audit.config").write_text(f"# placed by process {done.stdout.strip()} for TEST04; removed ...\n")
    with pytest.raises(AuditConfigError, match="left over from an interrupted compliance run"):
        check_no_stray_audit_config(tmp_path)                  # its process has ended: a leftover


def test_test04a_on_too_few_images_is_refused_before_the_model_loads(tmp_path, synthetic_coco, fast_conf, capsys,
                                                                    monkeypatch):
    import run
    monkeypatch.chdir(tmp_path)
    args = ["--scenario", "Offline", "--mode", "submission", "--data", str(synthetic_coco), "--cache-dir",
            str(tmp_path / "cache"), "--output", str(tmp_path / "o"), "--user-conf", str(fast_conf),
            "--backend", "null", "--image-size", "257", "257"]
    assert run.main(args) == 2                      # 8 images, 64 performance samples: LoadGen would segfault
    assert "TEST04-A issues each of the 64 performance samples once, but the data set has only 8 images" in \
        capsys.readouterr().err
    assert not (tmp_path / "cache").exists()        # refused before the cache was prepared
