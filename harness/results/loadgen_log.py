"""Reading LoadGen's result out of ``mlperf_log_detail.txt`` (and the summary as a fallback).

Assumption (LoadGen 6.0): every detail line that matters is
``:::MLLOG {json}`` with ``key``, ``value`` and ``metadata.is_error``; the
result keys are ``result_validity``, ``result_min_duration_met``,
``result_min_queries_met``, ``result_perf_constraints_met`` (Server),
``early_stopping_met``, ``result_<p>_percentile_latency_ns`` and one of
``result_samples_per_second`` (Offline), ``result_completed_samples_per_sec``
(Server) or ``result_qps_with_loadgen_overhead`` (queries/s, SingleStream); MultiStream
logs latencies only, so its rate is samples_per_query / mean query latency, with
samples_per_query from the log's ``effective_samples_per_query`` unless the
caller gives it. SingleStream and MultiStream results are LoadGen's early-stopping
latency estimates (``early_stopping_latency_ss`` / ``_ms``, the figure MLPerf's
submission checker reports), kept in ``early_stopping_ns``. A run cut short has
no result keys: validity is then "UNKNOWN".

Errors LoadGen logs (``metadata.is_error``) fail MLPerf's submission checker;
all but one mean the run is not a whole result (a sample completed twice, a
find-peak search whose lower bound fails). The exception is LoadGen's "Ending
early" error: the expected-QPS or latency hint was off, LoadGen ran out of
queries, and the result is INVALID with that reason, which is a result.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

_CONSTRAINTS = {
    "result_min_duration_met": "min duration not met (the run was shorter than min_duration)",
    "result_min_queries_met": "min query count not met",
    "result_perf_constraints_met": "latency constraint not met (too many queries over the latency bound)",
    "early_stopping_met": "early stopping criterion not met (too few queries for the latency percentile)",
}
_PERCENTILE = re.compile(r"result_(\d+\.\d+)_percentile_latency_ns")
_INVALID_NOT_FAILED = "error_runtime: Ending early"    # comes with INVALID and its reason: a result


@dataclass
class LoadGenResult:
    validity: str = "UNKNOWN"                     # VALID, INVALID or UNKNOWN (no result in the log)
    reasons: list[str] = field(default_factory=list)  # why INVALID, one line each
    samples_per_s: float | None = None
    query_count: int | None = None
    latency_ns: dict[str, float] = field(default_factory=dict)  # "50.00" -> ns, plus "min", "mean", "max"
    errors: list[str] = field(default_factory=list)             # LoadGen's own error messages
    early_stopping_ns: float | None = None    # SingleStream p90 / MultiStream p99 early-stopping estimate
    samples_per_query: int | None = None      # effective_samples_per_query from the log
    peak_qps: float | None = None             # FindPeakPerformance: the peak LoadGen found
    qps: float | None = field(default=None, repr=False)   # result_qps_with_loadgen_overhead (queries/s)

    @property
    def fatal_errors(self) -> list[str]:
        """LoadGen's errors that make the run no whole result (all but "Ending early", see the module docstring)."""
        return [e for e in self.errors if not e.startswith(_INVALID_NOT_FAILED)]

    def to_dict(self) -> dict:
        return {"validity": self.validity, "reasons": self.reasons, "samples_per_s": self.samples_per_s,
                "query_count": self.query_count, "latency_ns": self.latency_ns, "errors": self.errors,
                "early_stopping_ns": self.early_stopping_ns, "peak_qps": self.peak_qps}


def mllog_entries(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every ``:::MLLOG {json}`` record of a LoadGen detail log, streamed; lines that are not valid
    JSON (a tail cut short) are skipped. OSError when the file cannot be read."""
    with Path(path).open(errors="replace") as f:
        for line in f:
            if line.startswith(":::MLLOG "):
                try:
                    yield json.loads(line[len(":::MLLOG "):])
                except json.JSONDecodeError:
                    continue


def read_mllog(path: str | Path) -> dict[str, Any]:
    """The last value of every key in a detail log. OSError when the file cannot be read."""
    return {entry.get("key", ""): entry.get("value") for entry in mllog_entries(path)}


def read_detail_log(path: str | Path, samples_per_query: int | None = None) -> LoadGenResult:
    """Parse a ``mlperf_log_detail.txt``; lines that are not valid MLLOG JSON (a truncated tail) are skipped."""
    res = LoadGenResult()
    path = Path(path)
    if not path.is_file():
        res.reasons.append(f"{path} is missing (the run did not finish)")
        return res
    for entry in mllog_entries(path):
        _apply(res, entry)
    spq = samples_per_query or res.samples_per_query or 1
    if res.qps is not None and res.samples_per_s is None:
        res.samples_per_s = res.qps * spq
    if res.samples_per_s is None and res.latency_ns.get("mean"):
        # MultiStream reports latency only; its queries run one after another.
        res.samples_per_s = spq * 1e9 / res.latency_ns["mean"]
    if res.validity == "INVALID" and not res.reasons:
        res.reasons.append("LoadGen reported INVALID; see mlperf_log_summary.txt")
    return res


_PEAK = re.compile(r"Found peak performance field: ([\d.]+)")


def _apply(res: LoadGenResult, entry: dict) -> None:
    key, value = entry.get("key", ""), entry.get("value")
    if entry.get("metadata", {}).get("is_error") and key != "num_errors":
        res.errors.append(f"{key}: {value}")
    if key == "result_validity":
        res.validity = str(value)
    elif key in _CONSTRAINTS and value is False:
        res.reasons.append(_CONSTRAINTS[key])
    elif key in ("result_invalid_reason", "early_stopping_result") and value and res.validity == "INVALID":
        res.reasons.append(" ".join(str(value).replace("*", "").split()))
    elif key == "result_samples_per_second" or key == "result_completed_samples_per_sec":
        res.samples_per_s = float(value)
    elif key == "result_qps_with_loadgen_overhead":
        res.qps = float(value)
    elif key == "effective_samples_per_query":
        res.samples_per_query = int(value)
    elif key in ("early_stopping_latency_ss", "early_stopping_latency_ms") and value:
        res.early_stopping_ns = float(value)
    elif isinstance(value, str) and (m := _PEAK.search(value)):
        res.peak_qps = float(m.group(1))
    elif key == "result_query_count":
        res.query_count = int(value)
    elif key in ("result_min_latency_ns", "result_max_latency_ns", "result_mean_latency_ns"):
        res.latency_ns[key.split("_")[1]] = float(value)
    elif m := _PERCENTILE.fullmatch(key):
        res.latency_ns[m.group(1)] = float(value)
