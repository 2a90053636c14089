"""The performance checks of the compliance audits, per audit and MLPerf round (the project's own code).

Each audit folder's ``verify_performance.txt`` compares two runs' scores from
their ``mlperf_log_detail.txt``. Which runs, which score and which tolerance
follow the verification scripts of the round (mlcommons/inference):

- rules ``v2.0`` (tag v2.0, commit 33894a19c4af6207f7cfdda75f84570f04836de5,
  ``compliance/nvidia/*/verify_*performance.py``): the score is the summary's
  "Samples per second" (Offline), "Scheduled samples per second" (Server),
  "90th percentile latency" (SingleStream) and "99th percentile latency"
  (MultiStream), i.e. the detail log's ``result_samples_per_second``,
  ``result_scheduled_samples_per_sec``, ``result_90.00_percentile_latency_ns``
  and ``result_99.00_percentile_per_query_latency_ns``;
- rules ``none`` (later rounds, inference main): early stopping latency estimates
  and completed samples per second.

Checks (``reference`` -> ``test``, tolerance; SingleStream latencies of at most
200 us get 20%, and in later rounds MultiStream ones of at most 1.6 ms too):

- TEST01: performance run -> TEST01 run, within 10% both ways; both VALID.
- TEST05: performance run -> TEST05 run, within 5% both ways; both VALID.
- TEST04 (later rounds): performance run -> TEST04 run; the test not more than
  10% faster; both VALID. The harness also writes this check for TEST04-B
  (the same audit.config), which later rounds' checkers look for as TEST04.
- TEST04-A (v2.0, ``verify_test4_performance.py -u TEST04-A -s TEST04-B``):
  TEST04-A -> TEST04-B; TEST04-B not more than 10% faster than TEST04-A.
  Validity is not asked: TEST04-A issues each loaded sample once, fewer
  queries than a performance run needs to be VALID.

"Faster" is compared as speed (samples/s, or 1/latency), in every scenario;
v2.0's script compares MultiStream latencies as if they were throughputs,
which reads a faster TEST04-B as a pass: this check does not.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.compliance.verdicts import TEST_FAIL, TEST_PASS
from harness.results.loadgen_log import read_mllog
from harness.results.result_types import Verdict

LATER_SCORES = {"Offline": "result_samples_per_second", "Server": "result_completed_samples_per_sec",
                "SingleStream": "early_stopping_latency_ss", "MultiStream": "early_stopping_latency_ms"}
V20_SCORES = {"Offline": "result_samples_per_second", "Server": "result_scheduled_samples_per_sec",
              "SingleStream": "result_90.00_percentile_latency_ns",
              "MultiStream": "result_99.00_percentile_per_query_latency_ns"}
SCORE_KEYS = {"v2.0": V20_SCORES, "none": LATER_SCORES}
LATENCY_SCENARIOS = ("SingleStream", "MultiStream")
NOISY_TOLERANCE = 0.20
NOISY_LATENCY_NS = {"v2.0": {"SingleStream": 200_000},
                    "none": {"SingleStream": 200_000, "MultiStream": 1_600_000}}


class ComplianceError(RuntimeError):
    """A log an audit needs is missing or unreadable; the message names it."""


@dataclass(frozen=True)
class PerfCheck:
    """One audit's performance check: ``test`` compared with ``reference`` (run modes)."""

    reference: str
    test: str
    tolerance: float
    two_sided: bool           # False: only "not much faster" is asked
    require_valid: bool


def perf_check(audit: str) -> PerfCheck:
    """The performance check written to ``<audit>/verify_performance.txt``."""
    if audit == "TEST01":
        return PerfCheck("performance", "TEST01", 0.10, True, True)
    if audit == "TEST05":
        return PerfCheck("performance", "TEST05", 0.05, True, True)
    if audit in ("TEST04", "TEST04-B"):
        return PerfCheck("performance", audit, 0.10, False, True)
    if audit == "TEST04-A":
        return PerfCheck("TEST04-A", "TEST04-B", 0.10, False, False)
    raise ValueError(f"no performance check for {audit!r}")


@dataclass
class PerfScore:
    scenario: str
    value: float               # samples/s (Offline, Server) or latency in ns (SingleStream, MultiStream)
    validity: str
    target_latency_ns: int | None

    @property
    def is_latency(self) -> bool:
        return self.scenario in LATENCY_SCENARIOS

    @property
    def speed(self) -> float:
        """Higher is faster: samples/s, or 1e9 / latency."""
        return 1e9 / self.value if self.is_latency else self.value

    def describe(self) -> str:
        return f"{self.value / 1e6:.3f} ms" if self.is_latency else f"{self.value:.2f} samples/s"


def perf_score(detail_log: str | Path, rules: str = "none") -> PerfScore:
    """The score ``rules``' scripts compare (see the module docstring), read from ``detail_log``."""
    try:
        values = read_mllog(detail_log)
    except OSError as e:
        raise ComplianceError(f"cannot read {detail_log} ({e.strerror}): the run did not finish or was moved") from None
    scenario = values.get("effective_scenario")
    key = SCORE_KEYS.get(rules, LATER_SCORES).get(str(scenario))
    if key is None or values.get(key) is None:
        raise ComplianceError(f"{detail_log} has no result ({key or 'effective_scenario'} missing): "
                              "the run did not finish")
    target = values.get("effective_target_latency_ns")
    return PerfScore(str(scenario), float(values[key]), str(values.get("result_validity", "UNKNOWN")),
                     int(target) if scenario == "Server" and target is not None else None)


def _tolerance(check: PerfCheck, ref: PerfScore, rules: str) -> float:
    limit = NOISY_LATENCY_NS.get(rules, NOISY_LATENCY_NS["none"]).get(ref.scenario)
    return NOISY_TOLERANCE if limit is not None and ref.value <= limit else check.tolerance


def verify_performance(audit: str, ref_log: Path, test_log: Path, rules: str = "none") -> Verdict:
    """``audit``'s performance check (:func:`perf_check`) of ``test_log`` against ``ref_log`` (detail logs)."""
    check = perf_check(audit)
    ref, test = perf_score(ref_log, rules), perf_score(test_log, rules)
    tol = _tolerance(check, ref, rules)
    lines = [f"rules: {rules}", f"reference: {ref_log}", f"test: {test_log}", f"scenario: {ref.scenario}",
             f"reference score: {ref.describe()} ({ref.validity})", f"test score: {test.describe()} ({test.validity})"]
    ratio = test.speed / ref.speed
    if test.scenario != ref.scenario:
        passed, reason = False, f"scenarios differ: {test.scenario} vs {ref.scenario}"
    elif check.require_valid and (ref.validity != "VALID" or test.validity != "VALID"):
        passed, reason = False, f"both runs must be VALID (reference {ref.validity}, test {test.validity})"
    elif ref.target_latency_ns != test.target_latency_ns:
        passed, reason = False, f"Server latency bounds differ ({test.target_latency_ns} vs {ref.target_latency_ns} ns)"
    elif check.two_sided:
        passed = abs(ratio - 1.0) <= tol
        reason = f"speed {100 * ratio:.1f}% of the {check.reference} run, allowed {100 * (1 - tol):.0f}-{100 * (1 + tol):.0f}%"
    else:
        passed = ratio <= 1.0 + tol
        reason = f"speed {100 * ratio:.1f}% of the {check.reference} run, allowed up to {100 * (1 + tol):.0f}%"
    lines += [f"speed ratio (test / reference): {ratio:.4f}", f"tolerance: {100 * tol:.0f}%",
              TEST_PASS if passed else f"{TEST_FAIL}: {reason}"]
    return Verdict(f"{audit} performance", passed, reason, lines)
