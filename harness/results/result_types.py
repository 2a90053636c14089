"""The result types of a benchmark: one LoadGen run, a compliance audit, and the whole invocation.

``RunResult.exit_code`` is where a run's outcome becomes its exit status
(:class:`~ground.errors.ExitStatus`); ``LoadGenRun.problems`` is the
one list of what keeps a finished run from being a whole result (it becomes
the run's status, harness/results/run_status.py, and its exit status); everything
that prints or writes a result reads these types.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.accuracy.evaluate import AccuracyReport
from harness.results.loadgen_log import LoadGenResult
from ground.errors import ExitStatus
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
    simulated: bool = False      # a run it compares ran no model: the verdicts check the harness only

    @property
    def passed(self) -> bool:
        return self.error is None and all(v.passed for v in self.verdicts)

    def lines(self) -> list[str]:
        if self.error:
            return [f"{self.test}: FAIL (not verified: {self.error})"]
        tag = " [SIMULATED: the runs compared ran no model]" if self.simulated else ""
        return [v.line + tag for v in self.verdicts]


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
    recomputed_batches: int = 0          # batches that failed, or whose worker was lost, and were computed again
    workers: int = 1                     # workers the run computed on
    lost_workers: list[str] = field(default_factory=list)   # "worker i of n lost: why", in the order they were lost
    audit: AuditResult | None = None     # TEST01 / TEST04 verification (audit runs only)
    simulated: bool = False              # the backend runs no model (null, simulated)

    def problems(self) -> list[str]:
        """Why this finished run is not a whole result, one line each; empty when it is."""
        out = []
        if self.failures:
            out.append(f"{len(self.failures)} of {self.issued} samples failed (answered with no detections)")
        if self.worker_error:
            out.append(f"a worker died: {self.worker_error}")
        if self.accuracy_error:
            out.append(f"accuracy not computed: {self.accuracy_error}")
        elif self.accuracy is not None and self.accuracy.incomplete:
            out.append(f"accuracy {self.accuracy.incomplete}")
        if self.loadgen.fatal_errors:
            out.append(f"LoadGen logged {len(self.loadgen.fatal_errors)} error(s): {self.loadgen.fatal_errors[0]}")
        return out

    @property
    def label(self) -> str:
        """FAILED, SIMULATED or FINISHED (see harness/results/run_status.py)."""
        return "FAILED" if self.problems() else "SIMULATED" if self.simulated else "FINISHED"


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
    simulated: bool = False         # the backend runs no model (null, simulated)

    @property
    def failed_samples(self) -> int:
        return sum(len(r.failures) for r in self.runs + self.audits)

    @property
    def failed_audits(self) -> list[str]:
        return [a.mode for a in self.audits if a.audit is None or not a.audit.passed]

    @property
    def exit_code(self) -> int:
        """130 interrupted (143 terminated); 1 when a run has problems (failed samples, no or an incomplete
        mAP, LoadGen errors, a dead worker), a run was ended by a fault, or an audit failed; else 0.

        INVALID is a result, not an error (the summary and the report say INVALID, with LoadGen's reasons).
        """
        if self.interrupted:
            return self.interrupt_code
        if self.error or self.failed_audits or any(r.problems() for r in self.runs + self.audits):
            return ExitStatus.FAILED
        return ExitStatus.OK
