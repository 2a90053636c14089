"""Results that cannot mislead: every run folder says how its run ended, and only a finished run of a model
reads as a result.

Faults are injected where a user meets them: SIGINT and SIGTERM during a subprocess run, ``kill -9`` at
chosen points of a rerun into the same folder (before LoadGen starts, mid-run, after LoadGen ends), failed
samples, a compliance audit that fails, an audit cut by Ctrl-C, a LoadGen find-peak error, and a foreign
folder of LoadGen logs under ``run.py report``.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import run
from backends.model_config import ModelConfig
from backends.null import NullBackend
from harness.report.summary import format_summary
from harness.run.benchmark import run_benchmark
from harness.run.dataset import Dataset, open_dataset
from harness.settings.config import DataConfig, load_config
from qsl.memory_qsl import MemoryQSL
from tests.test_harness_scenarios import HINTS

ROOT = Path(__file__).resolve().parent.parent
SCEN = Path("o/default/ssd-resnet34/Offline")
MODEL = """
class B(NullBackend):
    name, simulated = "model", False     # stands in for a detector: its runs are real results
    def predict(self, images, image_hw):
        {hook}
        return super().predict(images, image_hw)
"""


def run_state(run_dir: Path):
    from harness.results.run_status import run_state
    return run_state(run_dir)


class Model(NullBackend):
    """The null backend standing in for a real detector (``simulated`` False), so its runs are results."""
    name, simulated = "model", False


def _main(capsys, argv):
    rc = run.main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _args(tmp_path, coco, conf, *extra):
    return ["--data", str(coco), "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "o"),
            "--user-conf", str(conf), "--num-classes", "7", "--image-size", "257", "257", "--scenario", "Offline",
            "--offline-expected-qps", "10000", "--random-weights", *extra]


def _subprocess_run(tmp_path, args, hook="pass", patch="") -> subprocess.CompletedProcess:
    """run.py in a new process with the stand-in model; ``hook`` runs in each predict, ``patch`` at start."""
    entry = tmp_path / "entry.py"
    entry.write_text(f"import os, signal, sys, time\nsys.path.insert(0, {str(ROOT)!r})\nimport run\n"
                     "from backends.null import NullBackend\n" + MODEL.format(hook=hook) +
                     "import harness.run.backend\nharness.run.backend.make_backend = lambda config, kind: B()\n"
                     f"{patch}\nsys.exit(run.main(sys.argv[1:]))\n")
    return subprocess.run([sys.executable, str(entry), *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig, code, how", [(signal.SIGINT, 130, "interrupted (Ctrl-C)"),
                                            (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_an_interrupted_run_never_reads_valid(tmp_path, synthetic_coco, fast_conf, capsys, sig, code, how):
    """The signal lands 0.6 s into an Offline run (past LoadGen's 0.5 s minimum): the unfinished samples are
    answered empty so that LoadGen ends, and its own summary may well say VALID. Nothing else may."""
    hook = f"time.sleep(0.1)\n        if self.calls == 6: os.kill(os.getpid(), {int(sig)})"
    proc = _subprocess_run(tmp_path, _args(tmp_path, synthetic_coco, fast_conf, "--mode", "performance"), hook)
    assert proc.returncode == code, proc.stderr[-2000:]
    report = (tmp_path / SCEN / "report.md").read_text()
    assert "Result: **VALID**" not in report and "- Result: **INTERRUPTED**, not a result" in report
    rc, out, err = _main(capsys, ["report", str(tmp_path / "o")])                      # rebuilt: the same
    assert rc == 0 and "Result: **VALID**" not in (tmp_path / SCEN / "report.md").read_text()
    rc, _, err = _main(capsys, ["package", str(tmp_path / "o"), str(tmp_path / "sub")])
    assert rc == 2 and f"default/ssd-resnet34/Offline/performance/run_1 is INTERRUPTED: {how}" in err
    assert not (tmp_path / "sub").exists() and len(err.strip().splitlines()) == 1
    state = run_state(tmp_path / SCEN / "performance/run_1")
    assert state.label == "INTERRUPTED" and how in state.reason and "answered with no detections" in state.reason


KILL_POINTS = {
    "before LoadGen starts": ("pass", "import harness.run.loadgen_run as m\n"
                                      "m.run_test = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)"),
    "mid-run": ("if self.calls == 2: os.kill(os.getpid(), signal.SIGKILL)", ""),
    "after LoadGen ends": ("pass", "import harness.run.loadgen_run as m\n"
                                   "m.check_run_logs = lambda *a: os.kill(os.getpid(), signal.SIGKILL)"),
}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_during_a_rerun_leaves_nothing_of_the_earlier_run(tmp_path, synthetic_coco, fast_conf, capsys,
                                                                  monkeypatch, point):
    monkeypatch.chdir(tmp_path)
    import harness.run.backend
    monkeypatch.setattr(harness.run.backend, "make_backend", lambda config, kind: Model(config.model))
    args = _args(tmp_path, synthetic_coco, fast_conf, "--mode", "accuracy", "--batch-size", "2")
    assert _main(capsys, args)[0] == 0                                    # a whole run first
    acc = tmp_path / SCEN / "accuracy"
    assert (acc / "accuracy.txt").read_text().startswith("mAP=")
    hook, patch = KILL_POINTS[point]
    proc = _subprocess_run(tmp_path, args, hook, patch)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    for name in ("accuracy.txt", "run_record.json"):                      # the earlier run's figures are gone
        assert not (acc / name).exists(), name
    assert "mAP=" not in (tmp_path / SCEN / "report.md").read_text()     # rewritten as the rerun started
    rc, _, _ = _main(capsys, ["report", str(tmp_path / "o")])
    report = (tmp_path / SCEN / "report.md").read_text()
    assert rc == 0 and "| `accuracy/` | **INCOMPLETE** |" in report and "mAP=" not in report
    rc, _, err = _main(capsys, ["package", str(tmp_path / "o"), str(tmp_path / "sub")])
    assert rc == 2 and "Offline/accuracy is INCOMPLETE: killed: process" in err
    state = run_state(acc)
    assert state.label == "INCOMPLETE" and state.reason.startswith("killed: process ")


def test_failed_samples_are_stated_beside_the_map_and_block_the_package(tmp_path, synthetic_coco, fast_conf,
                                                                        capsys, monkeypatch):
    image = json.loads((synthetic_coco / "annotations" / "instances_val2017.json").read_text())["images"][3]

    class FailOnImage3(Model):
        def predict(self, images, image_hw):
            if ((image_hw[:, 0] == image["height"]) & (image_hw[:, 1] == image["width"])).any():
                raise RuntimeError("cannot process image 3")
            return super().predict(images, image_hw)

    import harness.run.backend
    monkeypatch.setattr(harness.run.backend, "make_backend", lambda config, kind: FailOnImage3(config.model))
    rc, out, _ = _main(capsys, _args(tmp_path, synthetic_coco, fast_conf, "--mode", "accuracy"))
    assert rc == 1 and "status: FAILED; 1 of 8 samples failed" in out
    lines = (tmp_path / SCEN / "accuracy/accuracy.txt").read_text().splitlines()
    assert re.fullmatch(r"mAP=\d+\.\d{3}%", lines[0])                   # what MLPerf's checker reads, unchanged
    assert lines[1] == ("failed samples: 1 of 8 issued (answered with no detections, so their objects count as "
                        "missed): 3; images missing from the log: 0")
    assert sum("mAP=" in line for line in lines) == 1
    report = (tmp_path / SCEN / "report.md").read_text()
    assert f"- Accuracy: **FAILED**, not a result ({lines[0]} of this failed run)" in report
    rc, _, err = _main(capsys, ["package", str(tmp_path / "o"), str(tmp_path / "sub")])
    assert rc == 2 and "Offline/accuracy is FAILED: 1 of 8 samples failed" in err


class Drifting(Model):
    """Its detections move a little with every batch: the TEST01 audit finds different bytes."""

    def predict(self, images, image_hw):
        out = super().predict(images, image_hw)
        shift = torch.zeros(6)
        shift[:4] = 1e-3 * (self.calls % 7)                  # boxes only: scores and labels stay
        return [d + shift for d in out]


def test_a_failed_compliance_audit_fails_the_submission_run(tmp_path, synthetic_coco, fast_conf, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = ModelConfig(image_size=(257, 257), num_classes=7)
    dataset = open_dataset(DataConfig(data_dir=str(synthetic_coco), cache_dir=str(tmp_path / "cache")), (257,))
    config = load_config(None, {"model": {"image_size": [257, 257], "num_classes": 7},
                                "run": {"scenario": "Offline", "mode": "submission", "rules": "none",
                                        "user_conf": str(fast_conf),
                                        "output_dir": str(tmp_path / "o"), **HINTS}})
    result = run_benchmark(config, Drifting(model), dataset)
    text = format_summary(result)
    assert "COMPLIANCE: FAIL (TEST01" in text and result.exit_code == 1 and text.endswith("exit status 1")
    assert not result.audits[0].audit.passed
    assert result.runs[0].accuracy is not None and not result.runs[0].problems(), result.runs[0].problems()


class CtrlCDuringTest04(Model):
    """Presses Ctrl-C once, a few batches into the TEST04 run (its audit.config is in place then)."""
    pressed = False

    def predict(self, images, image_hw):
        audit = Path("audit.config")
        if not self.pressed and audit.exists() and "for TEST04" in audit.read_text():
            self.pressed = True
            import _thread
            _thread.interrupt_main()
        return super().predict(images, image_hw)


def test_verify_shows_an_audit_cut_by_ctrl_c_as_interrupted(tmp_path, fast_conf, monkeypatch, capsys):
    from harness.run.loadgen_thread import Interrupted
    monkeypatch.chdir(tmp_path)
    config = load_config(None, {"run": {"scenario": "Offline", "mode": "submission", "rules": "none",
                                        "user_conf": str(fast_conf),
                                        "output_dir": str(tmp_path / "o"), **HINTS}})
    with pytest.raises(Interrupted):
        run_benchmark(config, CtrlCDuringTest04(latency_ms=1.0), Dataset(MemoryQSL(50)))
    rc, out, _ = _main(capsys, ["verify", str(tmp_path / "o")])
    assert rc == 1 and "TEST04: FAIL (not verified: the TEST04 run (TEST04) is INTERRUPTED: " \
                       "interrupted (Ctrl-C)" in out
    assert "TEST01 accuracy: PASS" in out                                 # the audit that finished still passes


def test_a_find_peak_error_is_a_failure(tmp_path, fast_conf, monkeypatch):
    """LoadGen's find-peak search logs an error when the starting QPS already misses the latency bound."""
    monkeypatch.chdir(tmp_path)
    config = load_config(None, {"run": {"scenario": "Server", "mode": "find-peak", "user_conf": str(fast_conf),
                                        "output_dir": str(tmp_path / "o"), "server_target_qps": 200.0,
                                        "server_max_batch": 16}})
    result = run_benchmark(config, Model(latency_ms=110.0), Dataset(MemoryQSL(64)))
    (one,) = result.runs
    assert any("Initial lower bound does not satisfy" in e for e in one.loadgen.errors)
    assert result.exit_code == 1 and "status: FAILED; LoadGen logged 1 error(s)" in format_summary(result)
    assert run_state(one.out_dir).label == "FAILED"


def test_each_run_records_what_it_really_ran_on(tmp_path, synthetic_coco, fast_conf, capsys, monkeypatch):
    """A CPU run asked for device auto and CUDA graphs: the folder says cpu, and that no graphs were used."""
    monkeypatch.chdir(tmp_path)
    rc, _, err = _main(capsys, _args(tmp_path, synthetic_coco, fast_conf, "--mode", "accuracy", "--backbone",
                                     "resnet18", "--threads", "1", "--device", "auto"))
    assert rc == 0, err
    report = (tmp_path / SCEN / "report.md").read_text()
    assert "device=cpu (requested auto)" in report and "cuda_graphs=False (requested True)" in report
    assert "backend pytorch;" in report and "LoadGen 6.0.17" in report and "| `accuracy/` | **FINISHED** |" in report
    status = json.loads((tmp_path / SCEN / "accuracy/run_status.json").read_text())
    env = status["environment"]
    assert status["status"] == "finished" and status["started"] and status["ended"]
    assert env["device"] == "cpu" and env["cuda_graphs"] is False and env["threads"] == 1
    from backends.pytorch.precision import native_bf16
    auto = "bf16" if native_bf16()[0] else "fp32"          # the default precision, auto, is the CPU's best
    assert env["backend"] == "pytorch" and env["simulated"] is False and env["precision"] == auto
    assert env["precision_reason"].startswith("auto: ") and f"precision={auto} (requested auto)" in report
    assert env["packages"]["torch"] and env["packages"]["mlcommons-loadgen"] == "6.0.17" and env["python"]
    assert env["cpu"] and env["evaluator"].startswith("faster-coco-eval ")


def test_report_touches_only_run_folders_this_harness_made(tmp_path, synthetic_coco, fast_conf, capsys,
                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    scratch = tmp_path / "scratch"
    assert _main(capsys, _args(tmp_path, synthetic_coco, fast_conf, "--mode", "performance", "--backend", "null",
                               "--output", str(scratch / "ours")))[0] == 0
    theirs = scratch / "theirs/sys/model/Offline"
    (theirs / "performance/run_1").mkdir(parents=True)
    (theirs / "performance/run_1/mlperf_log_detail.txt").write_text(':::MLLOG {"key": "result_validity"}\n')
    (theirs / "performance/run_1/config.json").write_text("{}")          # a config.json proves nothing
    (theirs / "report.md").write_text("their own report\n")
    loose = scratch / "tool_output"
    loose.mkdir()
    (loose / "mlperf_log_detail.txt").write_text("")
    rc, out, err = _main(capsys, ["report", str(scratch)])
    assert rc == 0 and out.split() == [str((scratch / "ours/default/ssd-resnet34/Offline/report.md").resolve())]
    assert (theirs / "report.md").read_text() == "their own report\n" and not (theirs.parent / "report.md").exists()
    assert f"skipped {(theirs / 'performance/run_1').resolve()}: LoadGen logs not made by this harness" in err
    assert f"skipped {loose.resolve()}" in err
    rc, _, err = _main(capsys, ["report", str(scratch / "theirs")])
    assert rc == 2 and "no runs made by this harness" in err and "1 other LoadGen folder(s) skipped" in err


def test_a_rerun_replaces_harness_log_and_package_copies_only_what_the_checker_reads(
        tmp_path, synthetic_coco, fast_conf, capsys, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level("INFO", logger="harness")
    import harness.run.backend
    monkeypatch.setattr(harness.run.backend, "make_backend", lambda config, kind: Model(config.model))
    for mode in ("accuracy", "performance", "performance"):
        assert _main(capsys, _args(tmp_path, synthetic_coco, fast_conf, "--mode", mode))[0] == 0
    log_text = (tmp_path / SCEN / "performance/run_1/harness.log").read_text()
    assert log_text.count("Offline performance run (model)") == 1                # this run's lines only
    assert re.search(r"removed \d+ file\(s\) an earlier performance run left", log_text)
    rc, out, _ = _main(capsys, ["package", str(tmp_path / "o"), str(tmp_path / "sub")])
    assert rc == 0
    sub = tmp_path / "sub/closed/my_org"
    copied = sorted(str(p.relative_to(sub)) for p in sub.rglob("*") if p.is_file())
    scen = "default/ssd-resnet34/Offline"
    assert copied == [f"measurements/{scen}/{n}" for n in ("default_pytorch_Offline.json", "mlperf.conf", "user.conf")] \
        + [f"results/{scen}/{n}" for n in ("accuracy/accuracy.txt", "accuracy/mlperf_log_accuracy.json",
                                           "accuracy/mlperf_log_detail.txt", "accuracy/mlperf_log_summary.txt",
                                           "performance/run_1/mlperf_log_detail.txt",
                                           "performance/run_1/mlperf_log_summary.txt")] + ["systems/default.json"]
    assert (sub / "measurements" / scen / "user.conf").read_text() == fast_conf.read_text()
    measurements = json.loads((sub / "measurements" / scen / "default_pytorch_Offline.json").read_text())
    assert measurements["weight_data_types"] == "fp32" and measurements["retraining"] == "no"
    for needed in ("Offline: no TEST01 run", "Offline/README.md", "systems/default.json", "code/ssd-resnet34/pytorch"):
        assert needed in out, needed
