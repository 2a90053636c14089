"""The result types of a benchmark: one LoadGen run, a compliance audit, and the whole invocation.

``RunResult.exit_code`` is where a run's outcome becomes its exit status
(:class:`~harness.shared.errors.ExitStatus`); everything that prints or
writes a result reads these types.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.accuracy.evaluate import AccuracyReport
from harness.results.loadgen_log import LoadGenResult
from harness.shared.errors import ExitStatus
from harness.sut.completion import SampleFailure


@dataclass
class Verdict:
    check: str                 # "TEST01 accuracy", "TEST01 performance", "TEST04 performance"
    passed: bool
    reason: str                # one line: the numbers behind the verdict
    lines: list[str] = field(default_factory=list)   # the verify file's content

    @property
    def line(self) -> str:
        return f"{self.check}: {'PASS' if self.passed else 'FAIL'} ({self.reason})"


@dataclass
class AuditResult:
    test: str
    verdicts: list[Verdict]
    error: str | None = None     # why the audit could not be verified

    @property
    def passed(self) -> bool:
        return self.error is None and all(v.passed for v in self.verdicts)

    def lines(self) -> list[str]:
        if self.error:
            return [f"{self.test}: FAIL (not verified: {self.error})"]
        return [v.line for v in self.verdicts]


@dataclass
class LoadGenRun:
    mode: str
    out_dir: Path
    loadgen: LoadGenResult
    failures: list[SampleFailure]
    issued: int
    seconds: float
    accuracy: AccuracyReport | None = None
    accuracy_error: str | None = None
    latencies_s: list[float] = field(default_factory=list)  # per completed sample, issue to completion
    worker_error: str | None = None      # why a pipeline thread died during this run
    oom_batches: int = 0                 # batches that ran out of device memory (retried per image)
    audit: AuditResult | None = None     # TEST01 / TEST04 verification (audit runs only)


@dataclass
class RunResult:
    scenario: str
    mode: str
    backend: str
    runs: list[LoadGenRun] = field(default_factory=list)
    audits: list[LoadGenRun] = field(default_factory=list)   # TEST01 / TEST04 runs, verified
    interrupted: bool = False
    interrupt_code: int = ExitStatus.INTERRUPTED   # or ExitStatus.TERMINATED (SIGTERM)
    loadgen_finished: bool = True   # False only after an interrupt or a dead worker LoadGen did not return from
    error: str | None = None        # what ended the runs early (dead worker, lost output folder)

    @property
    def failed_samples(self) -> int:
        return sum(len(r.failures) for r in self.runs + self.audits)

    @property
    def exit_code(self) -> int:
        """130 interrupted (143 terminated); 1 failed samples, no accuracy figure or a run ended by a fault; else 0.

        INVALID and a failed audit are results, not errors (the summary says FAIL).
        """
        if self.interrupted:
            return self.interrupt_code
        if self.error or self.failed_samples or any(
                r.accuracy_error or (r.accuracy is not None and r.accuracy.incomplete) for r in self.runs):
            return ExitStatus.FAILED
        return ExitStatus.OK
