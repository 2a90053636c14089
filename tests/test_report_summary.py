"""The printed run summary (harness/report/summary.py): what a user reads first must not hide anything."""
from __future__ import annotations

from pathlib import Path

from harness.accuracy.evaluate import AccuracyReport
from harness.report.summary import format_summary
from harness.results.loadgen_log import LoadGenResult
from harness.results.result_types import LoadGenRun, RunResult


def _accuracy_run(skipped: list[str]) -> RunResult:
    report = AccuracyReport(stats=[0.5] * 12, images_evaluated=12, detections=40, skipped=skipped)
    run = LoadGenRun("accuracy", Path("out/accuracy"), LoadGenResult(), [], 12, 1.0, accuracy=report)
    return RunResult("Offline", "accuracy", "pytorch", runs=[run])


def test_images_the_cache_could_not_read_are_named_next_to_the_map():
    text = format_summary(_accuracy_run(["000000000007.jpg"]))
    assert "mAP=50.000%" in text
    assert ("1 image(s) unreadable when the cache was made, evaluated as blank (their objects count as missed): "
            "000000000007.jpg") in text
    many = format_summary(_accuracy_run([f"{i}.jpg" for i in range(8)]))
    assert "8 image(s) unreadable" in many and "0.jpg, 1.jpg, 2.jpg, 3.jpg, 4.jpg ..." in many
    assert "unreadable" not in format_summary(_accuracy_run([]))


def test_a_terminated_run_names_the_signal_and_its_exit_status():
    result = _accuracy_run([])
    result.interrupted, result.interrupt_code = True, 143
    text = format_summary(result)
    assert "INTERRUPTED: the run was terminated (SIGTERM)" in text and text.endswith("exit status 143")
    result.interrupt_code = 130
    assert "interrupted (Ctrl-C)" in format_summary(result) and format_summary(result).endswith("exit status 130")
