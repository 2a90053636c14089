"""One benchmark: settings, SUT, QSL, LoadGen run(s), logs, accuracy, result.

``run_benchmark(config)`` is the whole of ``run.py``'s work as a function
(``run.py`` only parses flags). Per LoadGen run it creates the run folder of
the submission layout, saves the resolved config and the user.conf used,
starts a fresh SUT, runs LoadGen with its logs in that folder, and reads the
result back; an accuracy run also gets ``accuracy.txt``. ``submission`` runs
accuracy, then performance.

LoadGen's ``StartTest`` blocks in C++, where Python cannot deliver Ctrl-C, so
it runs on a helper thread while the main thread waits. On Ctrl-C the
completer is closed (every outstanding and later sample completes at once
with an empty response), LoadGen gets ``INTERRUPT_GRACE_S`` to finish, and
:class:`Interrupted` tells the caller whether it did; the logs written so far
stay on disk.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.accuracy import AccuracyReport, evaluate_accuracy_log
from harness.coco_eval import AccuracyError
from harness.completion import SampleFailure
from harness.config import Config
from harness.dataset import Dataset, open_dataset
from harness.layout import prepare_run_dir, run_dir
from harness.loadgen_log import LoadGenResult, read_detail_log
from harness.settings import make_test_settings
from harness.sut_base import BaseSUT
from harness.sut_offline import OfflineSUT
from harness.sut_server import ServerSUT, server_max_wait_s
from harness.sut_stream import StreamSUT

log = logging.getLogger("harness")

INTERRUPT_GRACE_S = 3.0
MODE_RUNS = {"accuracy": ("accuracy",), "performance": ("performance",),
             "submission": ("accuracy", "performance"), "find-peak": ("find-peak",)}


class Interrupted(Exception):
    """Ctrl-C during a LoadGen run; ``finished`` says whether LoadGen returned within the grace period."""

    def __init__(self, finished: bool) -> None:
        super().__init__("interrupted")
        self.finished = finished


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


@dataclass
class RunResult:
    scenario: str
    mode: str
    backend: str
    runs: list[LoadGenRun] = field(default_factory=list)
    interrupted: bool = False
    loadgen_finished: bool = True   # False only after an interrupt LoadGen did not return from

    @property
    def failed_samples(self) -> int:
        return sum(len(r.failures) for r in self.runs)

    @property
    def exit_code(self) -> int:
        """130 interrupted, 1 failed samples or no accuracy figure, else 0 (INVALID is a result, not an error)."""
        if self.interrupted:
            return 130
        if self.failed_samples or any(r.accuracy_error for r in self.runs):
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


def _show_progress(sut: BaseSUT, done: threading.Event, desc: str, total: int | None) -> None:
    """A progress bar of completed samples, polled twice a second, until ``done`` is set."""
    from tqdm import tqdm
    with tqdm(total=total, desc=desc, unit="sample", mininterval=1.0, leave=False) as bar:
        while not done.wait(0.5):
            c = sut.completer
            bar.update(c.completed + len(c.failures) - bar.n)


def _start_test(sut: BaseSUT, qsl_handle: int, settings: Any, log_settings: Any,
                progress: tuple[str, int | None] | None = None) -> None:
    """Run LoadGen on a helper thread; the main thread stays free to receive Ctrl-C."""
    import mlperf_loadgen as lg
    done = threading.Event()
    if progress is not None:
        threading.Thread(target=_show_progress, args=(sut, done, *progress), name="progress", daemon=True).start()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            lg.StartTestWithLogSettings(sut.handle, qsl_handle, settings, log_settings)
        except BaseException as e:  # noqa: BLE001 - re-raised on the main thread
            errors.append(e)
        finally:
            done.set()

    threading.Thread(target=target, name="loadgen", daemon=True).start()
    try:
        while not done.wait(0.2):
            pass
    except KeyboardInterrupt:
        log.error("interrupted: completing the outstanding samples with empty responses")
        sut.completer.close("interrupted", "the run was interrupted (Ctrl-C)")
        raise Interrupted(done.wait(INTERRUPT_GRACE_S)) from None
    if errors:
        raise errors[0]


def run_loadgen(config: Config, mode: str, backend: Any, dataset: Dataset, out_dir: Path,
                use_pycocotools: bool = False, progress: bool = False) -> LoadGenRun:
    """One LoadGen run of ``mode`` (accuracy, performance, find-peak) with its logs in ``out_dir``."""
    import mlperf_loadgen as lg
    scenario = config.run.scenario
    settings = make_test_settings(config.run.user_conf, scenario, mode, config.run)
    prepare_run_dir(out_dir, config.run.user_conf)
    config.save(out_dir / "config.json")
    handler = logging.FileHandler(out_dir / "harness.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(message)s"))
    log.addHandler(handler)
    qsl = dataset.qsl
    sut = make_sut(scenario, backend, qsl, config, settings)
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(out_dir)
    log_settings.log_output.copy_summary_to_stdout = False
    log_settings.enable_trace = False
    qsl_handle = lg.ConstructQSL(qsl.total_count, qsl.perf_count, qsl.load, qsl.unload)
    sut.construct()
    sut.start()
    t0 = time.monotonic()
    finished = True
    try:
        bar = (f"{scenario} {mode}", dataset.total_count if mode == "accuracy" else None) if progress else None
        _start_test(sut, qsl_handle, settings, log_settings, bar)
    except Interrupted as e:
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
    spq = settings.multi_stream_samples_per_query if scenario == "MultiStream" else 1
    run = LoadGenRun(mode=mode, out_dir=out_dir, loadgen=read_detail_log(out_dir / "mlperf_log_detail.txt", spq),
                     failures=list(sut.completer.failures), issued=sut.issued, seconds=seconds,
                     latencies_s=list(sut.completer.latencies_s))
    if mode == "accuracy":
        _check_accuracy(run, dataset, use_pycocotools)
    return run


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
        return
    (run.out_dir / "accuracy.txt").write_text("\n".join(run.accuracy.lines()) + "\n")


def build_backend(config: Config) -> Any:
    """The PyTorch backend for ``config``, loaded and warmed up."""
    from backends.pytorch_backend import PyTorchBackend
    backend = PyTorchBackend(config.model, device=config.run.device, threads=config.run.threads)
    backend.load()
    backend.warmup()
    return backend


def run_benchmark(config: Config, backend: Any = None, dataset: Dataset | None = None,
                  use_pycocotools: bool = False, progress: bool = False) -> RunResult:
    """Run ``config.run.mode`` for ``config.run.scenario``; never raises for failed samples (see exit_code).

    Args:
        backend: a loaded, warmed-up backend; default the PyTorch backend built from ``config``.
        dataset: default the cache of ``config.data`` (prepared when missing).
        progress: show a progress bar of completed samples during each LoadGen run.

    Raises:
        SettingsError, OutputError, ConfigError and the QSL/backend errors for bad input,
        before any LoadGen run starts; Interrupted on Ctrl-C (with the partial result attached
        as ``.result``).
    """
    for mode in MODE_RUNS[config.run.mode]:  # settings and folders are checked before any work starts
        make_test_settings(config.run.user_conf, config.run.scenario, mode, config.run)
        prepare_run_dir(run_dir(config.run.output_dir, config.run.system_name, config.run.scenario, mode),
                        config.run.user_conf)
    if backend is None:
        backend = build_backend(config)
    if dataset is None:
        dataset = open_dataset(config.data, backend.sizes)
    result = RunResult(config.run.scenario, config.run.mode, getattr(backend, "name", type(backend).__name__))
    for mode in MODE_RUNS[config.run.mode]:
        out = run_dir(config.run.output_dir, config.run.system_name, config.run.scenario, mode)
        log.info("%s %s run: logs in %s", config.run.scenario, mode, out)
        try:
            result.runs.append(run_loadgen(config, mode, backend, dataset, out, use_pycocotools, progress))
        except Interrupted as e:
            result.interrupted, result.loadgen_finished = True, e.finished
            e.result = result  # type: ignore[attr-defined]
            raise
    return result
