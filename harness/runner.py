"""One benchmark: settings, SUT, QSL, LoadGen run(s), logs, accuracy, result.

``run_benchmark(config)`` is the whole of ``run.py``'s work as a function
(``run.py`` only parses flags). Per LoadGen run it creates the run folder of
the submission layout, saves the resolved config and the user.conf used,
starts a fresh SUT, runs LoadGen with its logs in that folder, and reads the
result back; an accuracy run also gets ``accuracy.txt``. ``submission`` runs
accuracy, performance, then the compliance audits TEST01 and TEST04 (each
with its own ``audit.config``, see harness/audit.py) and verifies them
(harness/compliance.py). Every run folder gets ``run_record.json`` and, for
timed runs, ``latencies_s.npy``; the scenario folder gets ``report.md``.

LoadGen runs on a helper thread watched by the main thread, which handles
Ctrl-C and dead pipeline threads (harness/loadgen_thread.py: Interrupted,
WorkerDied). A dead worker's run ends with its cause and no later run starts.
A run folder that disappears, or LoadGen logs left incomplete (disk full), is
an :class:`OutputError` naming the folder; folders written earlier are intact.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from harness.accuracy import AccuracyReport, evaluate_accuracy_log
from harness.coco_eval import AccuracyError
from harness.completion import SampleFailure
from harness.config import Config
from harness.dataset import Dataset, check_num_classes, open_dataset, pin_memory_for
from harness.audit import AUDIT_FILE, AUDITS, check_no_stray_audit_config, placed_audit_config
from harness.compliance import AuditResult, verify_audit
from harness.guarded_backend import GuardedBackend, batch_hint
from harness.layout import OutputError, exclusive_scenario, prepare_run_dir, run_dir, scenario_dir, write_text_atomic
from harness.run_record import check_run_logs, write_run_record
from harness.loadgen_log import LoadGenResult, read_detail_log
from harness.loadgen_thread import Interrupted, WorkerDied, start_test, worker_death
from harness.settings import make_test_settings
from harness.sut_base import BaseSUT
from harness.sut_offline import OfflineSUT
from harness.sut_server import ServerSUT, server_max_wait_s
from harness.sut_stream import StreamSUT

log = logging.getLogger("harness")

MODE_RUNS = {"accuracy": ("accuracy",), "performance": ("performance",),
             "submission": ("accuracy", "performance", *AUDITS), "find-peak": ("find-peak",)}


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
    interrupt_code: int = 130       # the exit status an interruption calls for: 130 Ctrl-C, 143 SIGTERM
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
            return 1
        return 0


def make_sut(scenario: str, backend: Any, qsl: Any, config: Config, settings: Any) -> BaseSUT:
    """The SUT for ``scenario``, sized from the run config and LoadGen's settings."""
    run = config.run
    if scenario in ("SingleStream", "MultiStream"):
        return StreamSUT(backend, qsl, scenario)
    if scenario == "Offline":
        return OfflineSUT(backend, qsl, run.batch_size)
    if scenario == "Server":
        wait = server_max_wait_s(run.server_max_wait_ms, settings.server_target_latency_ns)
        return ServerSUT(backend, qsl, run.server_max_batch, wait)
    raise ValueError(f"unknown scenario {scenario!r}")


def run_loadgen(config: Config, mode: str, backend: Any, dataset: Dataset, out_dir: Path,
                use_pycocotools: bool = False, progress: bool = False) -> LoadGenRun:
    """One LoadGen run of ``mode`` (accuracy, performance, find-peak, TEST01, TEST04) with its logs in ``out_dir``.

    An audit mode runs as a performance run with the audit's audit.config placed in the working
    directory for this run only; any other run refuses to start while an audit.config is there.
    """
    import mlperf_loadgen as lg
    scenario, audit = config.run.scenario, mode if mode in AUDITS else None
    settings = make_test_settings(config.run.user_conf, scenario, "performance" if audit else mode, config.run)
    prepare_run_dir(out_dir, config.run.user_conf)
    config.save(out_dir / "config.json")
    handler = logging.FileHandler(out_dir / "harness.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(message)s"))
    log.addHandler(handler)
    qsl = dataset.qsl
    wanted = settings.performance_sample_count_override or qsl.perf_count
    log.info("%s %s run (%s): %d samples in the data set, performance sample count %d", scenario, mode,
             getattr(backend, "name", type(backend).__name__), dataset.total_count, wanted)
    if mode != "accuracy" and dataset.total_count < wanted:
        log.warning("the data set has %d images, fewer than the performance sample count %d: LoadGen repeats "
                    "them, so this result is not representative of a full run (use more images)",
                    dataset.total_count, wanted)
    hint = batch_hint(scenario, config.run.batch_size, config.run.server_max_batch)
    guarded = backend.with_hint(hint) if isinstance(backend, GuardedBackend) else GuardedBackend(backend, hint=hint)
    sut = make_sut(scenario, guarded, qsl, config, settings)
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(out_dir)
    log_settings.log_output.copy_summary_to_stdout = False
    log_settings.enable_trace = False
    qsl_handle = lg.ConstructQSL(qsl.total_count, qsl.perf_count, qsl.load, qsl.unload)
    sut.construct()
    sut.start()
    t0 = time.monotonic()
    finished, death = True, None
    try:
        bar = (f"{scenario} {mode}", dataset.total_count if mode == "accuracy" else None) if progress else None
        with placed_audit_config(audit) if audit else _no_audit_config() as audit_file:
            start_test(sut, qsl_handle, settings, log_settings, audit_file, bar)
        death = worker_death(sut)   # before stop(), which closes the completer itself
    except (Interrupted, WorkerDied) as e:
        finished = e.finished
        raise
    finally:
        seconds = time.monotonic() - t0
        if finished:
            sut.stop()
            sut.destroy()
            lg.DestroyQSL(qsl_handle)
        log.removeHandler(handler)
        handler.close()
    check_run_logs(out_dir)
    spq = settings.multi_stream_samples_per_query if scenario == "MultiStream" else 1
    run = LoadGenRun(mode=mode, out_dir=out_dir, loadgen=read_detail_log(out_dir / "mlperf_log_detail.txt", spq),
                     failures=list(sut.completer.failures), issued=sut.issued, seconds=seconds,
                     latencies_s=list(sut.completer.latencies_s), worker_error=death,
                     oom_batches=guarded.oom_batches)
    if mode == "accuracy":
        _check_accuracy(run, dataset, use_pycocotools)
    write_run_record(run)
    return run


@contextlib.contextmanager
def _no_audit_config() -> Iterator[Path]:
    """The audit.config path LoadGen would read, proven absent."""
    check_no_stray_audit_config()
    yield Path(os.getcwd()) / AUDIT_FILE


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
            write_text_atomic(run.out_dir / "accuracy.txt", "\n".join(report.lines()) + "\n")
        return
    write_text_atomic(run.out_dir / "accuracy.txt", "\n".join(run.accuracy.lines()) + "\n")


def warmup_batch_sizes(config: Config, every_size: bool) -> tuple[int, ...]:
    """The batch sizes to warm up for a run of ``config.run.scenario``, largest first.

    The largest batch of the run is Offline ``batch_size``, Server ``server_max_batch``, MultiStream
    ``multistream_samples``, SingleStream 1; smaller ones occur too (a query's tail, a Server batch
    that did not fill). ``every_size`` (CUDA graphs: one capture per batch size) gives every size
    from the largest down to 1; otherwise the largest, 2 and 1 (torch.compile specializes 1 and
    makes one dynamic-shape graph from the second size it sees).
    """
    run = config.run
    largest = {"Offline": run.batch_size, "Server": run.server_max_batch,
               "MultiStream": run.multistream_samples, "SingleStream": 1}[run.scenario]
    if every_size:
        return tuple(range(largest, 0, -1))
    return tuple(sorted({largest, min(2, largest), 1}, reverse=True))


def build_backend(config: Config, per_image: bool | None = None) -> Any:
    """The PyTorch backend for ``config``, loaded and warmed up for the run's batch sizes.

    The warm-up runs the batch sizes of the scenario (:func:`warmup_batch_sizes`), so
    torch.compile and CUDA graph capture happen here, never inside a timed run. ``per_image``
    runs each image of a batch on its own so that its response bytes do not depend on the batch
    (see harness/guarded_backend.py); when not given, ``config.run.batch_invariant`` decides
    ("auto" = on for a CPU).
    """
    from backends.pytorch_backend import PyTorchBackend
    backend = PyTorchBackend(config.model, device=config.run.device, threads=config.run.threads,
                             trust_pickle=config.model.trust_pickle)
    backend.load()
    on_cpu = str(getattr(backend, "device", "cpu")).startswith("cpu")
    if per_image is None:
        per_image = {"on": True, "off": False}.get(config.run.batch_invariant, on_cpu)
    # Per image, the network only ever sees batches of one.
    graphs = not on_cpu and config.model.cuda_graphs
    backend.warmup(batch_sizes=(1,) if per_image else warmup_batch_sizes(config, graphs))
    if per_image:
        return GuardedBackend(backend, per_image=True)
    return backend


def _result_of(e: BaseException, result: RunResult) -> BaseException:
    e.result = result  # type: ignore[attr-defined]
    return e


def run_benchmark(config: Config, backend: Any = None, dataset: Dataset | None = None,
                  use_pycocotools: bool = False, progress: bool = False) -> RunResult:
    """Run ``config.run.mode`` for ``config.run.scenario``; never raises for failed samples (see exit_code).

    The scenario's output folder is held for the whole call (:func:`harness.layout.exclusive_scenario`):
    another process writing the same scenario there is refused with an OutputError.
    """
    run = config.run
    check_no_stray_audit_config()       # the checks that write nothing come before the folder is made
    for mode in MODE_RUNS[run.mode]:
        make_test_settings(run.user_conf, run.scenario, "performance" if mode in AUDITS else mode, run)
    with exclusive_scenario(scenario_dir(run.output_dir, run.system_name, run.scenario)):
        return _run_benchmark(config, backend, dataset, use_pycocotools, progress)


def _run_benchmark(config: Config, backend: Any, dataset: Dataset | None, use_pycocotools: bool,
                   progress: bool) -> RunResult:
    """:func:`run_benchmark` with the scenario folder held.

    Args:
        backend: a loaded, warmed-up backend; default the PyTorch backend built from ``config``.
        dataset: default the cache of ``config.data`` (prepared when missing).
        progress: show a progress bar of completed samples during each LoadGen run.

    Raises:
        SettingsError, OutputError, ConfigError, AuditConfigError and the QSL/backend errors for bad input,
        before any LoadGen run starts; Interrupted on Ctrl-C, WorkerDied when LoadGen outlives a dead
        worker, OutputError when a run's folder is lost (each with the partial result as ``.result``).
    """
    run, modes = config.run, MODE_RUNS[config.run.mode]
    for mode in modes:  # folders are made and checked before any work starts
        prepare_run_dir(run_dir(run.output_dir, run.system_name, run.scenario, mode), run.user_conf)
    if backend is None:
        backend = build_backend(config)
    if dataset is None:
        dataset = open_dataset(config.data, backend.sizes, pin_memory=pin_memory_for(backend))
    if "accuracy" in modes:   # an mAP needs labels that map onto the categories; speed runs need not
        check_num_classes(config.model.num_classes, dataset)
    result = RunResult(run.scenario, run.mode, getattr(backend, "name", type(backend).__name__))
    scenario_folder = scenario_dir(run.output_dir, run.system_name, run.scenario)
    try:
        for mode in modes:
            out = run_dir(run.output_dir, run.system_name, run.scenario, mode)
            log.info("%s %s run: logs in %s", run.scenario, mode, out)
            try:
                one = run_loadgen(config, mode, backend, dataset, out, use_pycocotools, progress)
            except Interrupted as e:
                result.interrupted, result.loadgen_finished = True, e.finished
                result.interrupt_code = e.exit_code
                raise _result_of(e, result)
            except WorkerDied as e:
                result.error, result.loadgen_finished = e.cause, False
                raise _result_of(e, result)
            except OutputError as e:
                result.error = str(e)
                raise _result_of(e, result)
            (result.audits if mode in AUDITS else result.runs).append(one)
            if one.worker_error:
                result.error = f"{mode} run: {one.worker_error}"
                break
            if mode in AUDITS:
                one.audit = verify_audit(mode, scenario_folder, dataset.annotation_file, use_pycocotools)
                log.info("%s", "; ".join(one.audit.lines()))
    finally:
        _write_report(scenario_folder)
    return result


def _write_report(folder: Path) -> None:
    """The scenario's report.md, rebuilt from what is on disk; a failure here never hides the run's own error."""
    from harness.markdown_report import write_report
    try:
        write_report(folder)
    except Exception as e:  # noqa: BLE001 - the report is a convenience; the logs are the record
        log.warning("could not write %s/report.md: %s", folder, e)
