"""One LoadGen run into its folder: settings, SUT, QSL, LoadGen, logs checked, result read back.

Per run it creates the run folder of the submission layout, removes what an
earlier run of the same mode left there (harness/results/layout.py), writes
``run_status.json`` as running with the environment (harness/results/run_status.py),
saves the resolved config and the user.conf used, starts a fresh SUT, runs
LoadGen with its logs in that folder (on a watched thread,
harness/run/loadgen_thread.py), and reads the result back; an accuracy run also gets
``accuracy.txt``, every run ``run_record.json`` and, for timed runs,
``latencies_s.npy``. However the run ends (finished, failed samples, Ctrl-C,
SIGTERM, a dead worker, an error), ``run_status.json`` is then replaced with
how (a signal: at once, before waiting for LoadGen, and again once it ended;
with a ``run_record.json`` of what was computed until then); only ``kill -9``
leaves it "running". A run folder that disappears, LoadGen logs left
incomplete (disk full), or a final status that cannot be written, is an
:class:`~ground.errors.OutputError` naming the folder or file.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from harness.accuracy.coco import AccuracyError
from harness.accuracy.evaluate import evaluate_accuracy_log
from harness.compliance.audit import (
    AUDIT_FILE,
    AUDITS,
    check_no_stray_audit_config,
    placed_audit_config,
)
from harness.results.environment import describe_environment
from harness.results.layout import (
    ACCURACY_TXT,
    check_run_dir,
    clear_run,
    prepare_run_dir,
)
from harness.results.loadgen_log import LoadGenResult, read_detail_log
from harness.results.result_types import LoadGenRun
from harness.results.run_record import check_run_logs, write_run_record
from harness.results.run_status import begin_status, end_status
from harness.run.dataset import Dataset
from harness.run.loadgen_thread import (
    Interrupted,
    WorkerDied,
    interrupt_cause,
    run_test,
)
from harness.run.process_exit import loadgen_returned
from harness.settings.config import Config
from harness.settings.loadgen import make_test_settings
from ground.errors import OutputError
from ground.files import write_text_atomic
from harness.sut.factory import make_sut
from harness.sut.out_of_memory import batch_hint
from harness.sut.per_image import GuardedBackend

log = logging.getLogger("harness")


def run_loadgen(config: Config, mode: str, backend: Any, dataset: Dataset, out_dir: Path,
                use_pycocotools: bool = False, progress: bool = False,
                on_start: Callable[[], None] | None = None) -> LoadGenRun:
    """One LoadGen run of ``mode`` (accuracy, performance, find-peak or an audit) with its logs in ``out_dir``.

    An audit mode runs as a performance run with the audit's audit.config placed in the working
    directory for this run only; any other run refuses to start while an audit.config is there.
    ``on_start`` is called once the folder is cleared and marked running, before LoadGen starts.
    """
    scenario = config.run.scenario
    settings = make_test_settings(config.run.user_conf, scenario, mode, config.run)   # an audit: its own settings
    check_run_dir(out_dir)
    removed = clear_run(out_dir, mode)
    env = describe_environment(backend, use_pycocotools)
    status = begin_status(out_dir, mode, scenario, env)

    def on_interrupt(how: str) -> None:   # before any wait: a SIGKILL soon after still finds the run interrupted
        _end(out_dir, status, "interrupted", [f"{how}: {CUT}; LoadGen was still ending the run when this was "
                                              "recorded"], False, final=False)

    try:
        if on_start is not None:
            on_start()
        run = _run(config, mode, settings, backend, dataset, out_dir, use_pycocotools, progress, removed,
                   on_interrupt)
    except Interrupted as e:
        _end(out_dir, status, "interrupted", [f"{e.how}: " + (CUT if e.finished else "LoadGen did not finish")],
             e.finished)
        raise
    except WorkerDied as e:
        _end(out_dir, status, "failed", [f"a worker died: {e.cause}; LoadGen did not finish"], False)
        raise
    except KeyboardInterrupt as e:     # Ctrl-C or SIGTERM outside LoadGen's run (set-up, evaluation)
        how = interrupt_cause(e)[0]
        _end(out_dir, status, "interrupted", [f"{how} while the run was set up or evaluated"], True)
        raise
    except OutputError as e:
        _end(out_dir, status, "incomplete", [str(e)], True)
        raise
    except BaseException as e:         # also a test's timeout or SystemExit on the main thread during LoadGen
        _end(out_dir, status, "failed", [f"{type(e).__name__}: {e}"], loadgen_returned())
        raise
    run.simulated = bool(env["simulated"])
    problems = run.problems()
    _end(out_dir, status, "failed" if problems else "finished", problems, True, must=True)
    return run


CUT = "the samples not yet computed were answered with no detections so that LoadGen could end"


def _end(out_dir: Path, status: dict, how: str, reasons: list[str], loadgen_finished: bool, final: bool = True,
         must: bool = False) -> None:
    """Record how the run ended (``final`` False: so far). A status that cannot be written atomically (disk
    full, the folder gone) is written in place as INCOMPLETE where the disk allows (harness/results/run_status.py);
    then it raises OutputError when ``must`` (the run's exit status must say so), else it is logged, never raised
    over the run's own outcome."""
    try:
        end_status(out_dir, status, how, reasons, loadgen_finished, final=final)
    except OutputError as e:
        if must:
            raise
        log.error("%s", e)


def _run(config: Config, mode: str, settings: Any, backend: Any, dataset: Dataset, out_dir: Path,
         use_pycocotools: bool, progress: bool, removed: list[Path], on_interrupt: Callable[[str], None]
         ) -> LoadGenRun:
    """:func:`run_loadgen` once the folder is marked running; ``on_interrupt(how)`` records a signal at once."""
    scenario, audit = config.run.scenario, mode if mode in AUDITS else None
    prepare_run_dir(out_dir, config.run.user_conf)
    config.save(out_dir / "config.json")
    handler = logging.FileHandler(out_dir / "harness.log", mode="w")   # this run's log only
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(message)s"))
    log.addHandler(handler)
    if removed:
        log.info("removed %d file(s) an earlier %s run left in %s", len(removed), mode, out_dir)
    # LoadGen's QSL callbacks (ConstructQSL, ConstructSUT and StartTest: run_test). Remote workers
    # (--executor ray) take each loaded set once, and batches then name its rows.
    shared = getattr(backend, "shared_samples", None)
    qsl = shared(dataset.qsl) if callable(shared) else dataset.qsl
    wanted = settings.performance_sample_count_override or qsl.perf_count
    log.info("%s %s run (%s): %d samples in the data set, performance sample count %d", scenario, mode,
             getattr(backend, "description", None) or getattr(backend, "name", type(backend).__name__),
             dataset.total_count, wanted)
    if mode != "accuracy" and dataset.total_count < wanted:
        log.warning("the data set has %d images, fewer than the performance sample count %d: LoadGen repeats "
                    "them, so this result is not representative of a full run (use more images)",
                    dataset.total_count, wanted)
    hint = batch_hint(scenario, config.run.batch_size, config.run.server_max_batch)
    guarded = backend.with_hint(hint) if isinstance(backend, GuardedBackend) else GuardedBackend(backend, hint=hint)
    sut = make_sut(scenario, guarded, qsl, config, settings)
    t0 = time.monotonic()
    try:
        bar = (f"{scenario} {mode}", dataset.total_count if mode == "accuracy" else None) if progress else None
        with placed_audit_config(audit) if audit else _no_audit_config() as audit_file:
            death = run_test(sut, qsl, settings, out_dir, audit_file, bar, on_interrupt)
    except (Interrupted, WorkerDied) as e:
        _record_stopped(sut, guarded, mode, out_dir, time.monotonic() - t0, e)
        raise
    finally:
        seconds = time.monotonic() - t0
        log.removeHandler(handler)
        handler.close()
    check_run_logs(out_dir)
    spq = settings.multi_stream_samples_per_query if scenario == "MultiStream" else 1
    run = _run_of(sut, guarded, mode, out_dir, seconds, read_detail_log(out_dir / "mlperf_log_detail.txt", spq))
    run.worker_error = death
    if mode == "accuracy":
        _check_accuracy(run, dataset, use_pycocotools)
    write_run_record(run)
    return run


def _run_of(sut: Any, guarded: GuardedBackend, mode: str, out_dir: Path, seconds: float,
            loadgen: LoadGenResult) -> LoadGenRun:
    return LoadGenRun(mode=mode, out_dir=out_dir, loadgen=loadgen, failures=list(sut.completer.failures),
                      issued=sut.issued, seconds=seconds, latencies_s=list(sut.completer.latencies_s),
                      oom_batches=guarded.oom_batches, workers=len(sut.pipeline.pool.workers),
                      recomputed_batches=sut.pipeline.pool.recomputed, lost_workers=list(sut.pipeline.pool.lost))


def _record_stopped(sut: Any, guarded: GuardedBackend, mode: str, out_dir: Path, seconds: float,
                    e: Interrupted | WorkerDied) -> None:
    """run_record.json of a run that a signal or a dead worker stopped: what was computed until then."""
    run = _run_of(sut, guarded, mode, out_dir, seconds, LoadGenResult())
    if isinstance(e, WorkerDied):
        run.worker_error = e.cause
    try:
        write_run_record(run, interrupted=e.how if isinstance(e, Interrupted) else None)
    except OutputError as err:
        log.error("%s", err)


@contextlib.contextmanager
def _no_audit_config() -> Iterator[Path]:
    """The audit.config path LoadGen would read, proven absent."""
    check_no_stray_audit_config()
    yield Path(os.getcwd()) / AUDIT_FILE


def samples_line(run: LoadGenRun, missing: int) -> str:
    """The accuracy.txt line beside ``mAP=``: failed and missing samples (it never contains ``mAP=``, which
    MLPerf's checker would read as the accuracy)."""
    failed = sorted({f.index for f in run.failures})
    which = (": " + ", ".join(map(str, failed[:20])) + (" ..." if len(failed) > 20 else "")) if failed else ""
    return (f"failed samples: {len(run.failures)} of {run.issued} issued (answered with no detections, so "
            f"their objects count as missed){which}; images missing from the log: {missing}")


def _check_accuracy(run: LoadGenRun, dataset: Dataset, use_pycocotools: bool) -> None:
    if dataset.annotation_file is None:
        run.accuracy_error = "no annotation file for this data set"
        return
    try:
        run.accuracy = evaluate_accuracy_log(run.out_dir / "mlperf_log_accuracy.json", dataset.annotation_file,
                                             expected=range(dataset.total_count), skipped=dataset.skipped,
                                             use_pycocotools=use_pycocotools)
    except AccuracyError as e:
        run.accuracy_error = str(e)
        report = getattr(e, "report", None)   # no mAP, but the counts of what was evaluated
        if report is not None:
            _write_accuracy_txt(run, report)
        return
    _write_accuracy_txt(run, run.accuracy)


def _write_accuracy_txt(run: LoadGenRun, report: Any) -> None:
    """accuracy.txt: the ``mAP=xx.xxx%`` line first (what MLPerf's checker reads), the samples line next."""
    lines = report.lines()
    lines.insert(1, samples_line(run, report.missing))
    write_text_atomic(run.out_dir / ACCURACY_TXT, "\n".join(lines) + "\n")
