"""Every scenario through LoadGen with the null backend: VALID, exactly-once, failures reported."""
from __future__ import annotations

import json

import pytest

from backends.null import NullBackend
from harness.report.summary import format_summary
from harness.results.layout import run_dir
from harness.run.benchmark import run_benchmark
from harness.run.dataset import Dataset
from harness.settings.config import load_config
from qsl.memory_qsl import MemoryQSL
from tests.conftest import FAST_CONF
from tests.test_harness_units import FailOn

# Hints that keep each run near the fast conf's 0.5 s. LoadGen pre-generates queries from them, so they must
# overstate the speed (it stops once min_duration and min_query_count are met). The Offline query is sized from
# offline_expected_qps, which must exceed the null backend's 8 samples/ms (8 per batch, 1 ms each).
HINTS = {"offline_expected_qps": 10000.0, "server_target_qps": 2000.0, "batch_size": 8,
         "singlestream_expected_latency_ms": 0.01, "multistream_expected_latency_ms": 0.01}


def _config(tmp_path, conf, scenario, mode="performance"):
    return load_config(None, {"run": {"scenario": scenario, "mode": mode, "user_conf": str(conf),
                                      "output_dir": str(tmp_path / "out"), **HINTS}})


@pytest.mark.parametrize("scenario", ["SingleStream", "MultiStream", "Offline", "Server"])
def test_performance_run_is_valid(tmp_path, scenario):
    """VALID however fast or loaded the machine: MultiStream's 1 ms per query is what a loaded machine made of
    0 ms, and the Server bound is 2 s, not 100 ms (a machine busy with other work missed 100 ms at p99)."""
    conf = tmp_path / "valid.conf"
    conf.write_text(FAST_CONF + "ssd-resnet34.Server.target_latency = 2000\n")
    backend = NullBackend(latency_ms=1.0 if scenario in ("Offline", "MultiStream") else 0.0)
    result = run_benchmark(_config(tmp_path, conf, scenario), backend, Dataset(MemoryQSL(100)))
    (run,) = result.runs
    assert run.loadgen.validity == "VALID", format_summary(result)
    assert run.failures == [] and result.exit_code == 0
    assert run.loadgen.samples_per_s > 0 and "99.00" in run.loadgen.latency_ns
    out = run_dir(tmp_path / "out", "default", scenario, "performance")
    assert run.out_dir == out and out.parts[-4:] == ("ssd-resnet34", scenario, "performance", "run_1")
    for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "config.json", "user.conf"):
        assert (out / name).is_file(), name
    assert json.loads((out / "config.json").read_text())["run"]["scenario"] == scenario
    assert "Result is : VALID" in (out / "mlperf_log_summary.txt").read_text()
    if scenario == "Server":    # the file's last setting is the one in force
        assert '"effective_target_latency_ns", "value": 2000000000' in (out / "mlperf_log_detail.txt").read_text()


def test_accuracy_mode_logs_every_sample_once(tmp_path, fast_conf):
    """MultiStream pads sample sets, so indices repeat; every index 0..N-1 still appears."""
    result = run_benchmark(_config(tmp_path, fast_conf, "MultiStream", "accuracy"), NullBackend(num_detections=3),
                           Dataset(MemoryQSL(50)))
    (run,) = result.runs
    entries = json.loads((run.out_dir / "mlperf_log_accuracy.json").read_text())
    assert {e["qsl_idx"] for e in entries} == set(range(50))
    assert all(len(bytes.fromhex(e["data"])) == 3 * 28 for e in entries)
    assert run.issued == len(entries)
    assert run.accuracy_error and result.exit_code == 1   # a memory QSL has no annotations to score


@pytest.mark.parametrize("scenario", ["Offline", "SingleStream"])
def test_failing_sample_is_reported_and_run_finishes(tmp_path, fast_conf, scenario):
    result = run_benchmark(_config(tmp_path, fast_conf, scenario), FailOn(bad=7), Dataset(MemoryQSL(20)))
    (run,) = result.runs
    assert run.failures and {f.index for f in run.failures} == {7}
    assert all("bad pixel in sample 7" in f.error for f in run.failures)
    assert result.exit_code == 1
    text = format_summary(result)
    assert f"failed samples: {len(run.failures)}" in text and "sample 7 (predict)" in text
    assert "sample index 7 failed in predict" in (run.out_dir / "harness.log").read_text()
