"""`run.py package`: the round's submission tree (results, measurements, compliance, systems), logs truncated."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from harness.compliance.package import PackageRefused, package_submission
from harness.compliance.system_desc import TO_FILL
from harness.compliance.truncate import ELLIPSIS
from ground.errors import OutputError

ENV = {"backend": "pytorch", "precision": "bf16", "checkpoint": "/models/model700.pt", "cpu": "Some CPU",
       "cpu_count": 2, "memory_bytes": 8 * 2**30, "platform": "Linux 6.1 x86_64", "python": "3.11.7",
       "packages": {"torch": "2.14.1", "mlcommons-loadgen": "6.0.17"}, "accelerators": []}
LOGS = {"mlperf_log_summary.txt", "mlperf_log_detail.txt"}


def finished(run_dir: Path, rules: str = "v2.0", simulated: bool = False, **env) -> Path:
    """Mark ``run_dir`` as a run that finished under ``rules`` (with a model unless ``simulated``), with its logs."""
    from harness.results.run_status import begin_status, end_status
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = begin_status(run_dir, "x", "Offline", {**ENV, "simulated": simulated, **env})
    (run_dir / "config.json").write_text(json.dumps({"run": {"rules": rules}}))
    (run_dir / "user.conf").write_text("ssd-resnet34.Offline.min_duration = 2000\n")
    for name in LOGS:
        (run_dir / name).write_text(f"{name} of {run_dir.name}\n")
    end_status(run_dir, doc, "finished", [], True)
    return run_dir


def _results(root: Path, acc_log: bytes, t01_verdict: str = "TEST PASS", rules: str = "v2.0") -> Path:
    scen = root / "sys" / "ssd-resnet34" / "Offline"
    finished(scen / "accuracy", rules)
    (scen / "accuracy" / "mlperf_log_accuracy.json").write_bytes(acc_log)
    (scen / "accuracy" / "accuracy.txt").write_text("mAP=20.000%\n")
    finished(scen / "performance" / "run_1", rules)
    for test in ("TEST01", "TEST04-A", "TEST04-B", "TEST05"):       # audits after the run they audit
        finished(scen / test, rules)
        (scen / test / "verify_performance.txt").write_text("...\nTEST PASS\n")
    (scen / "TEST01" / "mlperf_log_accuracy.json").write_text("[\n]\n")    # shorter than 4096
    (scen / "TEST01" / "verify_accuracy.txt").write_text(f"...\n{t01_verdict}\n")
    return scen


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_the_tree_has_the_rounds_layout_and_says_what_is_left(tmp_path):
    _results(tmp_path / "res", b"[\n]\n")
    done = package_submission(tmp_path / "res", tmp_path / "sub", submitter="org")
    root = tmp_path / "sub" / "closed" / "org"
    assert done.root == root
    assert _files(root / "results") == {f"sys/ssd-resnet34/Offline/{f}" for f in (
        *(f"accuracy/{n}" for n in (*LOGS, "mlperf_log_accuracy.json", "accuracy.txt")),
        *(f"performance/run_1/{n}" for n in LOGS))}
    assert _files(root / "measurements") == {f"sys/ssd-resnet34/Offline/{f}" for f in (
        "sys_pytorch_Offline.json", "user.conf", "mlperf.conf")}
    comp = root / "compliance" / "sys" / "ssd-resnet34" / "Offline"
    run_1 = {f"performance/run_1/{n}" for n in LOGS}
    assert _files(comp / "TEST01") == run_1 | {"verify_accuracy.txt", "verify_performance.txt",
                                               "accuracy/mlperf_log_accuracy.json", "accuracy/accuracy.txt"}
    for test in ("TEST04-A", "TEST04", "TEST05"):   # TEST04: TEST04-B again, for later checkers
        assert _files(comp / test) == run_1 | {"verify_performance.txt"}, test
    assert _files(comp / "TEST04-B") == run_1       # v2.0's run_verification.py leaves no verdict there
    assert (comp / "TEST04" / "performance/run_1/mlperf_log_detail.txt").read_text() == \
        "mlperf_log_detail.txt of TEST04-B\n"
    meas = json.loads((root / "measurements/sys/ssd-resnet34/Offline/sys_pytorch_Offline.json").read_text())
    assert meas["weight_data_types"] == "bf16" and meas["starting_weights_filename"] == "model700.pt"
    assert meas["weight_transformations"].startswith("BatchNorm folded into the preceding convolution")
    assert "cast to bf16" in meas["weight_transformations"]
    assert "*.*.qsl_rng_seed = 6655344265603136530" in \
        (root / "measurements/sys/ssd-resnet34/Offline/mlperf.conf").read_text()
    system = json.loads((root / "systems" / "sys.json").read_text())
    assert (system["division"], system["submitter"], system["status"], system["system_type"]) == \
        ("closed", "org", "rdi", "edge")
    assert system["host_processor_model_name"] == "Some CPU" and system["host_memory_capacity"] == "8.0 GiB"
    assert system["accelerators_per_node"] == 0 and system["framework"] == "PyTorch 2.14.1, MLPerf LoadGen 6.0.17"
    assert system["cooling"] == TO_FILL and any(t.endswith("sys.json: cooling") for t in done.todo)
    assert any("README.md" in t for t in done.todo) and any("code/ssd-resnet34/pytorch" in t for t in done.todo)


def test_test01_map_fallback_files_only_when_bytes_differed(tmp_path):
    scen = _results(tmp_path / "res", b"[\n]\n", t01_verdict="mAP check: PASS (3 responses differ; ...)")
    (scen / "TEST01" / "baseline_accuracy.txt").write_text("mAP=50.000%\n")
    (scen / "TEST01" / "compliance_accuracy.txt").write_text("mAP=50.100%\n")
    (scen / "TEST01" / "accuracy.txt").write_text("mAP=50.100%\n")
    package_submission(tmp_path / "res", tmp_path / "sub")
    acc = tmp_path / "sub/closed/my_org/compliance/sys/ssd-resnet34/Offline/TEST01/accuracy"
    assert _files(acc) == {"mlperf_log_accuracy.json", "accuracy.txt", "baseline_accuracy.txt",
                           "compliance_accuracy.txt"}
    assert (acc / "accuracy.txt").read_text().startswith("mAP=50.100%\n")


def test_a_failed_audit_is_refused_unless_asked_for(tmp_path):
    scen = _results(tmp_path / "res", b"[\n]\n")
    (scen / "TEST05" / "verify_performance.txt").write_text("...\nTEST FAIL: speed 120.8% of the performance run\n")
    with pytest.raises(PackageRefused, match=r"TEST05: TEST05/verify_performance.txt says 'TEST FAIL: speed 120.8%"):
        package_submission(tmp_path / "res", tmp_path / "sub")
    done = package_submission(tmp_path / "res", tmp_path / "sub", allow_failed_audits=True)
    assert any("TEST05" in t and "MLPerf's checker reports it" in t for t in done.todo)
    assert "TEST FAIL" in (done.root / "compliance/sys/ssd-resnet34/Offline/TEST05/verify_performance.txt").read_text()


def test_runs_under_loadgens_own_seeds_are_refused(tmp_path):
    _results(tmp_path / "res", b"[\n]\n", rules="none")
    with pytest.raises(PackageRefused, match=r"followed --rules none .*rerun with --rules v2.0"):
        package_submission(tmp_path / "res", tmp_path / "sub")
    assert not (tmp_path / "sub").exists()


def test_accuracy_logs_are_truncated_and_hashed_like_the_checker(tmp_path):
    records = {i: np.full((30, 7), i, np.float32) for i in range(30)}
    original = ("[\n" + ",\n".join(json.dumps({"seq_id": i, "qsl_idx": i, "data": r.tobytes().hex().upper()})
                                   for i, r in records.items()) + "\n]\n").encode()
    scen = _results(tmp_path / "res", original)
    done = package_submission(tmp_path / "res", tmp_path / "sub")
    assert len(done.truncated) == 2
    copy = tmp_path / "sub/closed/my_org/results/sys/ssd-resnet34/Offline"
    cut = (copy / "accuracy" / "mlperf_log_accuracy.json").read_bytes()
    assert cut == original[:4096] + ELLIPSIS.encode() + original[-4096:] and len(cut) < 10 * 1024
    assert (copy / "accuracy" / "accuracy.txt").read_text() == \
        f"mAP=20.000%\n\nhash={hashlib.sha256(original).hexdigest()}\n"
    t01 = tmp_path / "sub/closed/my_org/compliance/sys/ssd-resnet34/Offline/TEST01/accuracy"
    assert (t01 / "mlperf_log_accuracy.json").read_text() == "[\n]\n"
    small = hashlib.sha256("[\n]\n".encode()).hexdigest()
    assert (t01 / "accuracy.txt").read_text() == f"hash={small}\n"
    assert (scen / "accuracy" / "mlperf_log_accuracy.json").read_bytes() == original     # original untouched
    with pytest.raises(OutputError, match="already exists"):
        package_submission(tmp_path / "res", tmp_path / "sub")
