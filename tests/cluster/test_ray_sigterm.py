"""SIGTERM to a ``--executor ray`` run ends it as INTERRUPTED with exit status 143, like a local run.

``ray.init`` replaces the process's SIGTERM handler (``sys.exit(15)``) and Ray's core installs its own
failure handler for SIGTERM (it aborts: exit status 134); the run must keep its own. A real signal
to a real run.py on a local Ray: the one test here that starts Ray in a child process.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_ends_a_ray_run_as_interrupted_with_its_summary(tmp_path, synthetic_coco):
    # user.conf's 600 s Offline run of a simulated device holding each batch of 8 for 50 ms: far from over.
    cmd = [sys.executable, str(ROOT / "run.py"), "--scenario", "Offline", "--mode", "performance",
           "--backend", "simulated", "--sim-batch-ms", "50", "0", "--offline-expected-qps", "100",
           "--data", str(synthetic_coco), "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "o"),
           "--image-size", "64", "64", "--executor", "ray", "--ray-workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    run_dir = tmp_path / "o/default/ssd-resnet34/Offline/performance/run_1"
    deadline = time.monotonic() + 180
    while not (run_dir / "mlperf_log_detail.txt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-3000:]
    assert "INTERRUPTED: the run was terminated (SIGTERM)" in out and "exit status 143" in out
    assert (run_dir / "mlperf_log_summary.txt").stat().st_size > 0
    assert json.loads((run_dir / "run_status.json").read_text())["status"] == "interrupted"
