"""Reading LoadGen's result out of mlperf_log_detail.txt (harness/results/loadgen_log.py) and showing it."""
from __future__ import annotations

import json
from pathlib import Path

from harness.report.markdown import build_report
from harness.report.summary import format_summary
from harness.results.loadgen_log import read_detail_log
from harness.results.result_types import LoadGenRun, RunResult


def _log(path: Path, entries: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    lines = [":::MLLOG " + json.dumps({"key": k, "value": v, "metadata": {"is_error": False}})
             for k, v in entries.items()]
    (path / "mlperf_log_detail.txt").write_text("\n".join(lines) + "\n")
    return path / "mlperf_log_detail.txt"


def test_multistream_rate_uses_the_logged_samples_per_query(tmp_path):
    """MultiStream logs no rate: samples/s = samples per query / mean query latency, from the log itself."""
    detail = _log(tmp_path / "MultiStream/performance/run_1",
                  {"effective_samples_per_query": 8, "result_validity": "VALID",
                   "result_mean_latency_ns": 1_250_000_000, "early_stopping_latency_ms": 1_400_000_000})
    res = read_detail_log(detail)
    assert res.samples_per_query == 8 and res.samples_per_s == 8 * 1e9 / 1.25e9       # 6.4, not 0.8
    assert res.early_stopping_ns == 1.4e9
    report = build_report(tmp_path / "MultiStream")
    assert "- Throughput: 6.40 samples/s" in report
    assert "- Latency result (p99 early-stopping estimate): **1400.000 ms**" in report


def test_singlestream_result_and_find_peak_are_shown(tmp_path):
    ss = read_detail_log(_log(tmp_path / "ss", {"result_validity": "VALID", "result_qps_with_loadgen_overhead": 5.0,
                                                "early_stopping_latency_ss": 214_923_870,
                                                "early_stopping_latency_ms": 0}))
    assert ss.samples_per_s == 5.0 and ss.early_stopping_ns == 214_923_870
    peak = read_detail_log(_log(tmp_path / "peak", {
        "generic_message": "FindPeakPerformance: Found peak performance field: 8888.000000",
        "result_completed_samples_per_sec": 8713.3}))
    assert peak.peak_qps == 8888.0 and peak.samples_per_s == 8713.3
    for scenario, res, line in [("SingleStream", ss, "result (p90 early-stopping estimate): 214.924 ms"),
                                ("Server", peak, "peak Server QPS found: 8888.0")]:
        run = LoadGenRun("performance", tmp_path, res, [], 1, 1.0)
        assert line in format_summary(RunResult(scenario, "performance", "null", runs=[run]))
