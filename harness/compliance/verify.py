"""Verifying the compliance audits (MLPerf rules, the project's own code): TEST01's responses, every speed check.

TEST01 accuracy: every response the TEST01 performance run logged must equal,
byte for byte, the accuracy run's response for the same ``qsl_idx``. When some
differ, the fallback is the MLPerf checker's: the mAP of that subset in the
accuracy run (baseline) and in the TEST01 log (compliance) must agree within
``MAP_DELTA_PCT`` percent, ``|1 - baseline / compliance| * 100``. The
``verify_accuracy.txt`` line ``TEST PASS`` is written only for the
byte-for-byte pass, and ``baseline_accuracy.txt`` / ``compliance_accuracy.txt``
only when the fallback was used: the checker asks for exactly these files then
and repeats the mAP check itself from them. On CUDA, where batch invariance is
off and cuDNN picks algorithms per shape, the bytes are expected to differ
and the verdict says so; the mAP check decides.

The performance checks (which runs, which score, which tolerance, per audit
and round) are in harness/compliance/perf_check.py; the round is the one the
audit run followed (``run.rules`` in its ``config.json``).

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
from pathlib import Path

from harness.accuracy.coco import AccuracyError, load_ground_truth
from harness.accuracy.evaluate import AccuracyReport, decode_entries, evaluate_records
from harness.accuracy.log import AccuracyLogReader
from harness.compliance.perf_check import ComplianceError, perf_check, verify_performance
from harness.compliance.verdicts import MAP_CHECK, TEST_FAIL, TEST_PASS
from harness.results.layout import (
    ACCURACY_LOG,
    ACCURACY_TXT,
    BASELINE_ACCURACY,
    COMPLIANCE_ACCURACY,
    DETAIL_LOG,
    RUN_DIRS,
    VERIFY_ACCURACY,
    VERIFY_PERFORMANCE,
    read_status,
    run_rules,
)
from harness.results.loadgen_log import read_mllog
from harness.results.result_types import AuditResult, Verdict
from harness.results.run_record import read_run_record
from harness.results.run_status import RunState, run_state
from ground.files import write_text_atomic

MAP_DELTA_PCT = 1.0
CUDA_NOTE = ("expected on CUDA: batch invariance is off there and cuDNN picks its algorithms per batch shape, so a "
             "response's last bits depend on the batch it ran in; the mAP check decides")


def _digest(data: str) -> bytes:
    return hashlib.blake2b(data.upper().encode("ascii", "replace"), digest_size=16).digest()


def verify_test01_accuracy(accuracy_log: Path, test01_log: Path, annotation_file: Path | None,
                           out_dir: Path, use_pycocotools: bool = False, on_cuda: bool = False) -> Verdict:
    """Compare the TEST01 run's logged responses with the accuracy run's; writes the mAP files to ``out_dir``.

    Args:
        accuracy_log: the accuracy run's ``mlperf_log_accuracy.json``.
        test01_log: the TEST01 performance run's sampled ``mlperf_log_accuracy.json``.
        annotation_file: COCO annotations for the mAP of the subset; None skips it (no fallback possible).
        out_dir: the TEST01 folder: gets baseline_accuracy.txt, compliance_accuracy.txt and accuracy.txt
            when some responses differ (the mAP fallback), nothing otherwise.
        on_cuda: a compared run ran on CUDA, where differing bytes are expected (the verdict says so).
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
    if exact:
        reason = f"{matched} sampled responses identical byte for byte"
        lines += ["byte-for-byte check: PASS", TEST_PASS]
        return Verdict("TEST01 accuracy", True, reason, lines)
    if matched + mismatched == 0:
        reason = "the TEST01 log shares no qsl_idx with the accuracy run"
        return Verdict("TEST01 accuracy", False, reason, lines + [f"{TEST_FAIL}: {reason}"])
    lines.append(f"byte-for-byte check: FAIL ({mismatched} of {matched + mismatched} differ, {missing} missing)")
    if on_cuda:
        lines.append(CUDA_NOTE)
    maps = _subset_maps(accuracy_log, test01_log, sampled, annotation_file, out_dir, use_pycocotools)
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
    write_text_atomic(out_dir / BASELINE_ACCURACY, "\n".join(base.lines()) + "\n")
    write_text_atomic(out_dir / COMPLIANCE_ACCURACY, "\n".join(comp.lines()) + "\n")
    write_text_atomic(out_dir / ACCURACY_TXT, "\n".join(comp.lines()) + "\n")
    return base.map, comp.map


def _whole(state: RunState, run_dir: Path) -> bool:
    """Whether the run's logged responses are all computed: it finished, or failed only in its evaluation."""
    if state.complete:
        return True
    record = read_run_record(run_dir) if state.label == "FAILED" else None
    return record is not None and not record.get("failed") and not record.get("worker_error")


def _on_cuda(run_dir: Path) -> bool:
    device = ((read_status(run_dir) or {}).get("environment") or {}).get("device") or ""
    return any(str(d).startswith("cuda") for d in (device if isinstance(device, list) else [device]))


def verify_audit(test: str, scenario_dir: Path, annotation_file: Path | None = None,
                 use_pycocotools: bool = False) -> AuditResult:
    """Verify ``test`` (one of rules.AUDITS) from the logs under ``scenario_dir``; writes its verify files.

    Each audit run's folder is ``<scenario_dir>/<test>/``, LoadGen's raw output as MLPerf's
    run_verification.py reads it; the verify files are written beside it.
    """
    check = perf_check(test)
    audit = scenario_dir.joinpath(*RUN_DIRS[test])
    rules = run_rules(audit)
    modes = dict.fromkeys((("accuracy",) if test == "TEST01" else ()) + (check.reference, check.test, test))
    states = {mode: run_state(scenario_dir.joinpath(*RUN_DIRS[mode])) for mode in modes}
    unfinished = [f"the {mode} run ({'/'.join(RUN_DIRS[mode])}) is {state.line()}"
                  for mode, state in states.items() if not _whole(state, scenario_dir.joinpath(*RUN_DIRS[mode]))]
    if unfinished:
        return AuditResult(test, [], "; ".join(unfinished))
    simulated = any(state.label == "SIMULATED" for state in states.values())
    ref, tested = (scenario_dir.joinpath(*RUN_DIRS[m], DETAIL_LOG) for m in (check.reference, check.test))
    try:
        verdicts = [verify_performance(test, ref, tested, rules)]
        write_text_atomic(audit / VERIFY_PERFORMANCE, "\n".join(verdicts[0].lines) + "\n")
        if test == "TEST01":
            sampled = audit / ACCURACY_LOG
            if not sampled.is_file():
                raise ComplianceError(f"{sampled} is missing: the TEST01 run logged no responses")
            for stale in (BASELINE_ACCURACY, COMPLIANCE_ACCURACY, ACCURACY_TXT):   # written again on a fallback
                (audit / stale).unlink(missing_ok=True)
            on_cuda = any(_on_cuda(scenario_dir.joinpath(*RUN_DIRS[m])) for m in ("accuracy", "TEST01"))
            acc = verify_test01_accuracy(scenario_dir / "accuracy" / ACCURACY_LOG, sampled,
                                         annotation_file, audit, use_pycocotools, on_cuda)
            write_text_atomic(audit / VERIFY_ACCURACY, "\n".join(acc.lines) + "\n")
            verdicts.insert(0, acc)
    except (ComplianceError, AccuracyError, OSError) as e:
        return AuditResult(test, [], str(e), simulated)
    return AuditResult(test, verdicts, simulated=simulated)
