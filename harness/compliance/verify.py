"""Verifying the compliance audits TEST01 and TEST04 (MLPerf rules, the project's own code).

TEST01 accuracy: every response the TEST01 performance run logged must equal,
byte for byte, the accuracy run's response for the same ``qsl_idx``. When some
differ, the fallback is the MLPerf checker's: the mAP of that subset in the
accuracy run (baseline) and in the TEST01 log (compliance) must agree within
``MAP_DELTA_PCT`` percent, ``|1 - baseline / compliance| * 100``. The
``verify_accuracy.txt`` line ``TEST PASS`` is written only for the
byte-for-byte pass, so MLPerf's checker repeats the mAP check itself from
``TEST01/accuracy/{baseline,compliance}_accuracy.txt``.

Performance scores (from ``mlperf_log_detail.txt``): Offline samples/s,
Server completed samples/s, SingleStream / MultiStream early-stopping latency
(90th / 99th percentile). Both runs must be VALID.

- TEST01 performance: within ``PERF_TOLERANCE`` (10%) of the performance run,
  both ways (20% when a latency is at most 200 us SingleStream or 1.6 ms
  MultiStream, where operating-system noise dominates).
- TEST04 (one sample issued over and over): not more than ``PERF_TOLERANCE``
  faster than the performance run (speed as throughput, or 1/latency); a
  system that caches results would be much faster. Slower is not a finding.

An audit is verified only when every run it compares has whole responses
(``run_status.json``, harness/results/run_status.py): a run that was interrupted,
killed, or had failed samples or a dead worker makes the audit FAIL, naming
the run and why (a run FAILED only for its mAP, say with no annotation file,
still has whole responses). Runs of a backend with no model (null,
simulated) are compared, and the verdicts are marked SIMULATED.

Logs are streamed (see ``harness/accuracy/log.py``): memory grows with the
number of distinct images, not with the size of the logs.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from harness.accuracy.coco import AccuracyError, load_ground_truth
from harness.accuracy.evaluate import AccuracyReport, decode_entries, evaluate_records
from harness.accuracy.log import AccuracyLogReader
from harness.compliance.verdicts import MAP_CHECK, TEST_FAIL, TEST_PASS
from harness.results.layout import RUN_DIRS, VERIFY_ACCURACY, VERIFY_PERFORMANCE
from harness.results.loadgen_log import read_mllog
from harness.results.result_types import AuditResult, Verdict
from harness.results.run_record import read_run_record
from harness.results.run_status import RunState, run_state
from ground.files import write_text_atomic

MAP_DELTA_PCT = 1.0
PERF_TOLERANCE = 0.10
NOISY_TOLERANCE = 0.20
NOISY_LATENCY_NS = {"SingleStream": 200_000, "MultiStream": 1_600_000}
SCORE_KEYS = {"Offline": "result_samples_per_second", "Server": "result_completed_samples_per_sec",
              "SingleStream": "early_stopping_latency_ss", "MultiStream": "early_stopping_latency_ms"}


class ComplianceError(RuntimeError):
    """A log an audit needs is missing or unreadable; the message names it."""


@dataclass
class PerfScore:
    scenario: str
    value: float               # samples/s (Offline, Server) or latency in ns (SingleStream, MultiStream)
    validity: str
    target_latency_ns: int | None

    @property
    def is_latency(self) -> bool:
        return self.scenario in NOISY_LATENCY_NS

    @property
    def speed(self) -> float:
        """Higher is faster: samples/s, or 1e9 / latency."""
        return 1e9 / self.value if self.is_latency else self.value

    def describe(self) -> str:
        return f"{self.value / 1e6:.3f} ms" if self.is_latency else f"{self.value:.2f} samples/s"


def perf_score(detail_log: str | Path) -> PerfScore:
    try:
        values = read_mllog(detail_log)
    except OSError as e:
        raise ComplianceError(f"cannot read {detail_log} ({e.strerror}): the run did not finish or was moved") from None
    scenario = values.get("effective_scenario")
    key = SCORE_KEYS.get(str(scenario))
    if key is None or values.get(key) is None:
        raise ComplianceError(f"{detail_log} has no result ({key or 'effective_scenario'} missing): "
                              "the run did not finish")
    target = values.get("effective_target_latency_ns")
    return PerfScore(str(scenario), float(values[key]), str(values.get("result_validity", "UNKNOWN")),
                     int(target) if scenario == "Server" and target is not None else None)


def _tolerance(ref: PerfScore) -> float:
    limit = NOISY_LATENCY_NS.get(ref.scenario)
    return NOISY_TOLERANCE if limit is not None and ref.value <= limit else PERF_TOLERANCE


def _perf_verdict(check: str, ref_log: Path, test_log: Path, two_sided: bool) -> Verdict:
    ref, test = perf_score(ref_log), perf_score(test_log)
    tol = _tolerance(ref)
    lines = [f"reference: {ref_log}", f"test: {test_log}", f"scenario: {ref.scenario}",
             f"reference score: {ref.describe()} ({ref.validity})", f"test score: {test.describe()} ({test.validity})"]
    ratio = test.speed / ref.speed
    if test.scenario != ref.scenario:
        passed, reason = False, f"scenarios differ: {test.scenario} vs {ref.scenario}"
    elif ref.validity != "VALID" or test.validity != "VALID":
        passed, reason = False, f"both runs must be VALID (reference {ref.validity}, test {test.validity})"
    elif ref.target_latency_ns != test.target_latency_ns:
        passed, reason = False, f"Server latency bounds differ ({test.target_latency_ns} vs {ref.target_latency_ns} ns)"
    elif two_sided:
        passed = abs(ratio - 1.0) <= tol
        reason = f"speed {100 * ratio:.1f}% of the performance run, allowed {100 * (1 - tol):.0f}-{100 * (1 + tol):.0f}%"
    else:
        passed = ratio <= 1.0 + tol
        reason = f"speed {100 * ratio:.1f}% of the performance run, allowed up to {100 * (1 + tol):.0f}%"
    lines += [f"speed ratio (test / reference): {ratio:.4f}", f"tolerance: {100 * tol:.0f}%",
              TEST_PASS if passed else f"{TEST_FAIL}: {reason}"]
    return Verdict(check, passed, reason, lines)


def verify_performance(test: str, reference_detail: Path, test_detail: Path) -> Verdict:
    """TEST01 (two-sided) or TEST04 (one-sided) performance check of ``test_detail`` against the reference run."""
    return _perf_verdict(f"{test} performance", reference_detail, test_detail, two_sided=(test == "TEST01"))


def _digest(data: str) -> bytes:
    return hashlib.blake2b(data.upper().encode("ascii", "replace"), digest_size=16).digest()


def verify_test01_accuracy(accuracy_log: Path, test01_log: Path, annotation_file: Path | None,
                           out_dir: Path, use_pycocotools: bool = False) -> Verdict:
    """Compare the TEST01 run's logged responses with the accuracy run's; writes the mAP files to ``out_dir``.

    Args:
        accuracy_log: the accuracy run's ``mlperf_log_accuracy.json``.
        test01_log: the TEST01 performance run's sampled ``mlperf_log_accuracy.json``.
        annotation_file: COCO annotations for the mAP of the subset; None skips it (no fallback possible).
        out_dir: ``TEST01/accuracy``: gets baseline_accuracy.txt, compliance_accuracy.txt, accuracy.txt.
    """
    reference: dict[int, bytes] = {}
    acc_entries = acc_duplicates = acc_mismatch = 0
    for e in AccuracyLogReader(accuracy_log):
        acc_entries += 1
        idx, d = int(e["qsl_idx"]), _digest(e.get("data", ""))
        if idx in reference:
            acc_duplicates += 1
            acc_mismatch += reference[idx] != d
        else:
            reference[idx] = d
    test_entries = matched = mismatched = missing = 0
    first_mismatches: list[int] = []
    sampled: set[int] = set()
    reader = AccuracyLogReader(test01_log)
    for e in reader:
        test_entries += 1
        idx = int(e["qsl_idx"])
        sampled.add(idx)
        if idx not in reference:
            missing += 1
        elif reference[idx] == _digest(e.get("data", "")):
            matched += 1
        else:
            mismatched += 1
            if len(first_mismatches) < 10:
                first_mismatches.append(idx)
    exact = mismatched == 0 and missing == 0 and matched > 0
    lines = [f"accuracy run log: {accuracy_log}", f"TEST01 log: {test01_log}",
             f"num_acc_log_entries = {acc_entries}", f"num_acc_log_duplicate_keys = {acc_duplicates}",
             f"num_acc_log_data_mismatch = {acc_mismatch}", f"num_perf_log_entries = {test_entries}",
             f"num_perf_log_qsl_idx_match = {matched + mismatched}", f"num_perf_log_data_mismatch = {mismatched}",
             f"num_missing_qsl_idxs = {missing}"]
    if reader.note:
        lines.append(reader.note)
    if first_mismatches:
        lines.append(f"first differing qsl_idx: {first_mismatches}")
    maps = _subset_maps(accuracy_log, test01_log, sampled, annotation_file, out_dir, use_pycocotools)
    if exact:
        reason = f"{matched} sampled responses identical byte for byte"
        lines += ["byte-for-byte check: PASS", TEST_PASS]
        return Verdict("TEST01 accuracy", True, reason, lines)
    if matched + mismatched == 0:
        reason = "the TEST01 log shares no qsl_idx with the accuracy run"
        return Verdict("TEST01 accuracy", False, reason, lines + [f"{TEST_FAIL}: {reason}"])
    lines.append(f"byte-for-byte check: FAIL ({mismatched} of {matched + mismatched} differ, {missing} missing)")
    if maps is None:
        reason = f"{mismatched} responses differ and there is no annotation file for the mAP fallback"
        return Verdict("TEST01 accuracy", False, reason, lines + [f"{TEST_FAIL}: {reason}"])
    base, comp = maps
    delta = abs(1.0 - base / comp) * 100.0 if comp > 0 else float("inf")
    passed = delta <= MAP_DELTA_PCT and base > 0
    reason = (f"{mismatched} responses differ; mAP of the {len(sampled)} sampled images: baseline "
              f"{100 * base:.3f}%, compliance {100 * comp:.3f}%, delta {delta:.2f}% (allowed {MAP_DELTA_PCT:g}%)")
    lines += [f"{MAP_CHECK}: {'PASS' if passed else 'FAIL'} ({reason})"]
    return Verdict("TEST01 accuracy", passed, reason, lines)


def _subset_maps(accuracy_log: Path, test01_log: Path, subset: set[int], annotation_file: Path | None,
                 out_dir: Path, use_pycocotools: bool) -> tuple[float, float] | None:
    """mAP of ``subset`` in both logs, written to baseline/compliance/accuracy.txt; None without annotations."""
    if annotation_file is None or not subset:
        return None
    gt = load_ground_truth(str(annotation_file), use_pycocotools)
    n = len(gt.dataset["images"])
    reports: list[AccuracyReport] = []
    for log in (accuracy_log, test01_log):
        entries = (e for e in AccuracyLogReader(log) if int(e["qsl_idx"]) in subset)
        records, _, _ = decode_entries(entries, n)
        try:
            reports.append(evaluate_records(records, annotation_file, expected=sorted(subset),
                                            use_pycocotools=use_pycocotools, gt=gt))
        except AccuracyError:
            return None
    base, comp = reports
    write_text_atomic(out_dir / "baseline_accuracy.txt", "\n".join(base.lines()) + "\n")
    write_text_atomic(out_dir / "compliance_accuracy.txt", "\n".join(comp.lines()) + "\n")
    write_text_atomic(out_dir / "accuracy.txt", "\n".join(comp.lines()) + "\n")
    return base.map, comp.map


def _whole(state: RunState, run_dir: Path) -> bool:
    """Whether the run's logged responses are all computed: it finished, or failed only in its evaluation."""
    if state.complete:
        return True
    record = read_run_record(run_dir) if state.label == "FAILED" else None
    return record is not None and not record.get("failed") and not record.get("worker_error")


def verify_audit(test: str, scenario_dir: Path, annotation_file: Path | None = None,
                 use_pycocotools: bool = False) -> AuditResult:
    """Verify ``test`` (TEST01, TEST04) from the logs under ``scenario_dir``; writes its verify files.

    TEST01's sampled accuracy log is moved from ``TEST01/performance/run_1/`` to ``TEST01/accuracy/``
    (the MLPerf layout) before it is compared.
    """
    audit = scenario_dir / test
    ref_detail = scenario_dir / "performance" / "run_1" / "mlperf_log_detail.txt"
    test_run = audit / "performance" / "run_1"
    states = {mode: run_state(scenario_dir.joinpath(*RUN_DIRS[mode]))
              for mode in (("accuracy",) if test == "TEST01" else ()) + ("performance", test)}
    unfinished = [f"the {mode} run ({'/'.join(RUN_DIRS[mode])}) is {state.line()}"
                  for mode, state in states.items() if not _whole(state, scenario_dir.joinpath(*RUN_DIRS[mode]))]
    if unfinished:
        return AuditResult(test, [], "; ".join(unfinished))
    simulated = any(state.label == "SIMULATED" for state in states.values())
    try:
        verdicts = [verify_performance(test, ref_detail, test_run / "mlperf_log_detail.txt")]
        write_text_atomic(audit / VERIFY_PERFORMANCE, "\n".join(verdicts[0].lines) + "\n")
        if test == "TEST01":
            acc_dir = audit / "accuracy"
            acc_dir.mkdir(exist_ok=True)
            sampled = acc_dir / "mlperf_log_accuracy.json"
            if (test_run / "mlperf_log_accuracy.json").is_file():
                (test_run / "mlperf_log_accuracy.json").replace(sampled)
            if not sampled.is_file():
                raise ComplianceError(f"{sampled} is missing: the TEST01 run logged no responses")
            acc = verify_test01_accuracy(scenario_dir / "accuracy" / "mlperf_log_accuracy.json", sampled,
                                         annotation_file, acc_dir, use_pycocotools)
            write_text_atomic(audit / VERIFY_ACCURACY, "\n".join(acc.lines) + "\n")
            verdicts.insert(0, acc)
    except (ComplianceError, AccuracyError, OSError) as e:
        return AuditResult(test, [], str(e), simulated)
    return AuditResult(test, verdicts, simulated=simulated)
