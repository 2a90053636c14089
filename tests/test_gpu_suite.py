"""The GPU suite's driver (benchmarks/gpu_suite.py): its plan, step failures and timeouts, and the summary.

The steps themselves need a GPU; here they are replaced by fake child processes.
"""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from benchmarks import gpu_suite as suite


def _flag(argv, name):
    return argv[argv.index(name) + 1]


def test_plan_runs_the_three_benchmarks_per_size_pair_on_cuda_fp16():
    steps = suite.plan(["700_1400", "tests"], quick=True, python="py")
    assert [s.name for s in steps] == ["tests", "700_1400/efficiency", "700_1400/server", "700_1400/singlestream"]
    for s in steps[1:]:
        a = s.argv
        assert a[0] == "py" and a[1].endswith(f"bench_{s.name.split('/')[1]}.py")
        assert _flag(a, "--device") == "cuda" and _flag(a, "--precision") == "fp16"
        assert _flag(a, "--backbone") == "resnet34" and _flag(a, "--num-classes") == "81"
        assert a[a.index("--image-size") + 1:a.index("--image-size") + 3] == ["700", "1400"]
        assert _flag(a, "--suffix") == "_gpu_700_1400" and s.results.endswith("_gpu_700_1400.json")
    assert "tests/test_perf_paths.py" in steps[0].argv
    with pytest.raises(ValueError, match="unknown step"):
        suite.plan(["300"], quick=False)


def test_a_failed_and_a_hung_step_are_reported_and_do_not_stop_the_suite():
    step = suite.Step("300_600/server", ["py", "bench_server.py"], 5, None)

    def fails(argv, **kw):
        return subprocess.CompletedProcess(argv, 3, stdout="probing\n", stderr="CUDA error: out of memory\n")

    def hangs(argv, **kw):
        raise subprocess.TimeoutExpired(argv, kw["timeout"], output=b"captured 12 graphs\n")

    failed = suite.run_step(step, fails)
    assert failed.status == "failed (exit 3)" and "out of memory" in failed.tail
    hung = suite.run_step(step, hangs)
    assert hung.status == "timed out after 5 s" and "captured 12 graphs" in hung.tail
    md = suite.summary_md([failed, hung], "NVIDIA H100 80GB HBM3", "2026-01-01 00:00 UTC")
    assert "| 300_600/server | failed (exit 3) |" in md and "## 300_600/server: timed out after 5 s" in md


def test_figures_come_only_from_a_results_file_the_step_wrote(tmp_path):
    step = suite.Step("300_600/efficiency", ["py"], 5, "efficiency_gpu_300_600.json")
    path = tmp_path / step.results
    path.write_text(json.dumps({"ratio_median": 0.97, "loadgen_samples_per_s_median": 2000.0,
                                "bare_samples_per_s_median": 2062.0, "mfu": 0.31, "machine": "H100"}))
    old = time.time() - 3600
    os.utime(path, (old, old))
    assert "missing" in suite.figures(step, started=time.time() - 60, results=tmp_path)   # stale: not quoted
    fig = suite.figures(step, started=old - 1, results=tmp_path)
    assert fig["ratio_median"] == 0.97 and fig["mfu"] == 0.31
    outcome = suite.Outcome(step.name, step.argv, "ok", 42.0, "", fig)
    md = suite.summary_md([outcome], "NVIDIA H100 80GB HBM3", "2026-01-01 00:00 UTC")
    assert "Offline 2000.0 samples/s, bare 2062.0; efficiency 0.970 (goal >= 0.95); MFU 31.0%" in md


def test_the_tests_step_reports_pytests_counts_so_skipped_gpu_tests_show():
    step = suite.plan(["tests"], quick=True, python="py")[0]

    def pytest_run(argv, **kw):
        return subprocess.CompletedProcess(argv, 0, stdout="....s\n80 passed, 9 skipped in 40.1s\n", stderr="")

    out = suite.run_step(step, pytest_run)
    assert out.figures == {"pytest": "80 passed, 9 skipped in 40.1s"}
    assert "| tests | ok | 0 | 80 passed, 9 skipped in 40.1s |" in suite.summary_md([out], "gpu", "now")
