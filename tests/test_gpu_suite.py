"""The GPU suite (benchmarks/gpu_suite.py, gpu_summary.py, gpu_checks.py): its plan, time budget, wheel
install, step failures and timeouts, and the summary. The steps themselves need a GPU; here they are
replaced by fake child processes."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks import gpu_checks, gpu_summary
from benchmarks import gpu_suite as suite

ROOT = Path(__file__).resolve().parent.parent


def _flag(argv, name):
    return argv[argv.index(name) + 1]


def test_default_plan_runs_the_readme_configs_in_fp16_on_cuda():
    steps = suite.plan(suite.DEFAULT_STEPS, python="py")
    assert [s.name for s in steps] == ["tests", "checks", "offline", "server", "profile"]
    for s in steps[1:]:
        assert _flag(s.argv, "--config") == str(ROOT / "configs" / "ssd300_600.toml")
        assert _flag(s.argv, "--precision") == "fp16" and _flag(s.argv, "--device") == "cuda"
        assert "--random-weights" in s.argv and "demo" not in " ".join(s.argv)
    assert _flag(steps[2].argv, "--batch-size") == "32" and steps[2].results == "efficiency_gpu_300_600.json"
    assert steps[1].results == "gpu_checks.json" and steps[4].results == "gpu_profile.json"
    tests = steps[0].argv
    assert _flag(tests, "-k") == "cuda" and all((ROOT / t).is_file() for t in tests if t.startswith("tests/"))
    big = suite.plan(["700_1400"], python="py")
    assert [s.name for s in big] == ["700_1400/offline", "700_1400/server"]
    assert all(_flag(s.argv, "--config") == str(ROOT / "configs" / "ssd700_1400.toml") for s in big)
    with pytest.raises(ValueError, match="unknown step"):
        suite.plan(["300"])


def test_every_planned_benchmark_command_parses_with_its_scripts_flags(monkeypatch):
    import argparse
    import importlib

    class Parsed(Exception):
        pass

    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(parse(self, args, namespace))
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    for step in suite.plan(suite.STEPS, python="py")[1:]:
        script = importlib.import_module("benchmarks." + Path(step.argv[1]).stem)
        with pytest.raises(Parsed) as parsed:
            script.main(step.argv[2:])
        assert parsed.value.args[0].device == "cuda", step.name


def test_the_default_steps_fit_the_budget_and_the_budget_fits_five_minutes():
    assert suite.LIMIT_S["install"] + sum(suite.LIMIT_S[s] for s in suite.DEFAULT_STEPS) <= suite.BUDGET_S <= 300


def test_steps_are_cut_to_the_budget_and_the_rest_skipped(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(suite.time, "monotonic", lambda: clock[0])
    given = []

    def hangs_to_its_limit(argv, **kw):
        given.append(kw["timeout"])
        clock[0] += kw["timeout"]
        raise subprocess.TimeoutExpired(argv, kw["timeout"], output=b"still capturing\n")

    steps = [suite.Step(f"s{i}", ["py", str(i)], 40) for i in range(4)]
    outcomes = suite.run_all(steps, budget_s=100, runner=hangs_to_its_limit, spent_s=10)
    assert given == [40, 40, 10]                       # 10 s spent before, then 40 + 40 + what is left
    assert [o.status for o in outcomes] == ["timed out after 40 s", "timed out after 40 s", "timed out after 10 s",
                                            "skipped: the 100 s budget is spent"]


def test_install_puts_only_the_missing_wheels_into_the_side_folder(tmp_path):
    calls = []

    def pip(argv, **kw):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout="Successfully installed\n", stderr="")

    have = {"mlcommons-loadgen": "6.0.17", "faster-coco-eval": "1.7.0", "pytest": "8.0", "pluggy": "1.5",
            "iniconfig": "2", "packaging": "24", "pygments": "2.1"}
    out = suite.install(tmp_path / "whl", tmp_path / "site", python="py", installed=have.get, runner=pip)
    assert out.status == "ok"
    (argv,) = calls
    assert argv[:3] == ["py", "-m", "pip"] and {"--no-index", "--no-deps"} <= set(argv)
    assert _flag(argv, "--target") == str(tmp_path / "site") and _flag(argv, "--find-links") == str(tmp_path / "whl")
    # a wrong pinned version, and two absent ones
    assert argv[-3:] == ["faster-coco-eval==1.8.0", "tqdm==4.70.1", "pytest-timeout==2.4.0"]
    done = suite.install(None, tmp_path / "site", installed=lambda n: dict(
        suite.requirements()).get(n), runner=pip)
    assert done.status == "ok" and len(calls) == 1                           # nothing missing: no pip
    missing = suite.install(None, tmp_path / "site", installed=lambda n: None, runner=pip)
    assert missing.status == "failed (no --wheels)" and "gpu_wheels.txt" in missing.tail


def test_children_import_the_side_folder_first(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    (tmp_path / "site").mkdir()
    env = suite.child_env(tmp_path / "site")
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path / "site"), "/elsewhere"]
    assert "PYTHONPATH" not in suite.child_env(tmp_path / "absent") or \
        suite.child_env(tmp_path / "absent")["PYTHONPATH"] == "/elsewhere"


def test_a_failed_and_a_hung_step_are_reported_and_do_not_stop_the_suite():
    step = suite.Step("server", ["py", "bench_server.py"], 5, None)

    def fails(argv, **kw):
        return subprocess.CompletedProcess(argv, 3, stdout="probing\n", stderr="CUDA error: out of memory\n")

    def hangs(argv, **kw):
        raise subprocess.TimeoutExpired(argv, kw["timeout"], output=b"captured 12 graphs\n")

    failed = suite.run_step(step, fails)
    assert failed.status == "failed (exit 3)" and "out of memory" in failed.tail
    hung = suite.run_step(step, hangs)
    assert hung.status == "timed out after 5 s" and "captured 12 graphs" in hung.tail
    doc = {"date": "2026-01-01 00:00 UTC", "gpu": "NVIDIA H200", "torch": "2.11.0", "python": "3.12.3",
           "seconds": 12.0, "budget_s": 290.0}
    md = gpu_summary.summary_md([failed, hung], doc)
    assert "GPU: NVIDIA H200, torch 2.11.0, Python 3.12.3" in md
    assert "| server | failed (exit 3) |" in md and "## server: timed out after 5 s" in md


def test_figures_come_only_from_a_results_file_the_step_wrote(tmp_path):
    path = tmp_path / "efficiency_gpu_300_600.json"
    path.write_text(json.dumps({"ratio_median": 0.97, "loadgen_samples_per_s_median": 2000.0, "workers": 2,
                                "bare_samples_per_s_median": 2062.0, "mfu": 0.31, "eager_calls": {}}))
    old = time.time() - 3600
    os.utime(path, (old, old))
    assert "missing" in gpu_summary.figures("offline", path.name, time.time() - 60, folder=tmp_path)   # stale
    fig = gpu_summary.figures("offline", path.name, old - 1, folder=tmp_path)
    assert gpu_summary.figures_text("offline", fig) == (
        "Offline 2000.0 samples/s, bare 2062.0 (2 workers both sides); efficiency 0.970 (goal >= 0.95); "
        "MFU 31.0%; eager calls none")


def test_the_tests_step_reports_pytests_counts_so_skipped_gpu_tests_show():
    step = suite.plan(["tests"], python="py")[0]

    def pytest_run(argv, **kw):
        return subprocess.CompletedProcess(argv, 0, stdout="....s\n80 passed, 9 skipped in 40.1s\n", stderr="")

    out = suite.run_step(step, pytest_run)
    assert out.figures == {"pytest": "80 passed, 9 skipped in 40.1s"}
    doc = {"date": "now", "gpu": "gpu", "torch": "t", "python": "p", "seconds": 1.0, "budget_s": 0.0}
    assert "| tests | ok | 0 | 80 passed, 9 skipped in 40.1s |" in gpu_summary.summary_md([out], doc)


# -- gpu_checks helpers --------------------------------------------------------------------------------

def _det(rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)


def test_top_agreement_counts_same_label_twins_and_the_score_gap():
    ref = [_det([[0.1, 0.1, 0.5, 0.5, 0.9, 1], [0.6, 0.6, 0.9, 0.9, 0.8, 2]])]
    got = [_det([[0.1, 0.1, 0.5, 0.505, 0.88, 1],      # twin: same label, IoU ~0.99, score 0.02 lower
                 [0.6, 0.6, 0.9, 0.9, 0.8, 3]])]      # same box, other label: no twin
    share, gap, n = gpu_checks.top_agreement(ref, got)
    assert (share, n) == (0.5, 2) and gap == pytest.approx(0.02, abs=1e-6)


def test_kernel_table_ranks_by_device_time_per_predict():
    events = [SimpleNamespace(key="conv", count=40, self_device_time_total=8000.0),
              SimpleNamespace(key="nms", count=10, self_device_time_total=2000.0),
              SimpleNamespace(key="cpu only", count=10, self_device_time_total=0.0)]
    rows, total = gpu_checks._kernel_table(SimpleNamespace(key_averages=lambda: events), iters=10)
    assert [r["name"] for r in rows] == ["conv", "nms"] and total == pytest.approx(1.0)
    assert rows[0]["ms_per_predict"] == pytest.approx(0.8) and rows[0]["share"] == pytest.approx(0.8)
    assert rows[0]["calls_per_predict"] == 4
