"""One invocation: every LoadGen run that ``--mode`` calls for, into the submission layout.

``run_benchmark(config)`` is the whole of ``run.py``'s work as a function
(``run.py`` only parses flags). ``submission`` runs accuracy, performance,
then every compliance audit of the rules profile (``run.rules``,
harness/settings/rules.py; v2.0: TEST01, TEST04-A, TEST04-B, TEST05), each
with its own ``audit.config`` (harness/compliance/audit.py), and, once all
have run, verifies each (harness/compliance/verify.py: TEST04-A compares
with TEST04-B, which runs after it); the scenario folder gets ``report.md``.

Each run folder records how its run ended (``run_status.json``, see
harness/results/run_status.py), and report.md is rebuilt as each run starts (it
then shows that run as RUNNING) and once more when the invocation ends.

A dead worker's run ends with its cause and no later run starts; Ctrl-C,
a dead worker LoadGen did not return from and a lost run folder raise
(:class:`~harness.run.loadgen_thread.Interrupted`, :class:`~harness.run.loadgen_thread.WorkerDied`,
:class:`~ground.errors.OutputError`) with the partial result as ``.result``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from harness.compliance.audit import AUDITS, check_audit_samples
from harness.compliance.verify import verify_audit
from harness.report.markdown import write_report
from harness.results.layout import (
    check_run_dir,
    exclusive_scenario,
    run_dir,
    scenario_dir,
)
from harness.results.result_types import RunResult
from harness.run.backend import build_backend
from harness.run.dataset import Dataset, check_num_classes, open_dataset, pin_memory_for
from harness.run.loadgen_run import run_loadgen
from harness.run.preflight import check_loadgen_inputs, mode_runs
from harness.run.loadgen_thread import Interrupted, WorkerDied
from harness.settings.config import Config
from harness.settings.loadgen import make_test_settings
from ground.errors import OutputError

log = logging.getLogger("harness")

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
    check_loadgen_inputs(config)       # audit.config, user.conf, the output folder: before anything is made
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
    run, modes = config.run, mode_runs(config.run)
    for mode in modes:  # folders are made and checked before any work starts; each is cleared as its run starts
        check_run_dir(run_dir(run.output_dir, run.system_name, run.scenario, mode))
    if backend is None:
        backend = build_backend(config)
    if dataset is None:
        dataset = open_dataset(config.data, backend.sizes, pin_memory=pin_memory_for(backend))
    if "accuracy" in modes:   # an mAP needs labels that map onto the categories; speed runs need not
        check_num_classes(config.model.num_classes, dataset)
    if "TEST04-A" in modes:
        settings = make_test_settings(run.user_conf, run.scenario, "TEST04-A", run)
        check_audit_samples(modes, settings.performance_sample_count_override or dataset.qsl.perf_count,
                            dataset.total_count)
    result = RunResult(run.scenario, run.mode, getattr(backend, "name", type(backend).__name__),
                       simulated=bool(getattr(backend, "simulated", True)))
    scenario_folder = scenario_dir(run.output_dir, run.system_name, run.scenario)
    try:
        for mode in modes:
            out = run_dir(run.output_dir, run.system_name, run.scenario, mode)
            log.info("%s %s run: logs in %s", run.scenario, mode, out)
            try:
                one = run_loadgen(config, mode, backend, dataset, out, use_pycocotools, progress,
                                  on_start=lambda: _write_report(scenario_folder))
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
        for one in result.audits:   # after every audit ran: TEST04-A is compared with TEST04-B
            one.audit = verify_audit(one.mode, scenario_folder, dataset.annotation_file, use_pycocotools)
            log.info("%s", "; ".join(one.audit.lines()))
    finally:
        _write_report(scenario_folder)
    return result


def _write_report(folder: Path) -> None:
    """The scenario's report.md, rebuilt from what is on disk; a failure here never hides the run's own error."""
    try:
        write_report(folder)
    except Exception as e:  # noqa: BLE001 - the report is a convenience; the logs are the record
        log.warning("could not write %s/report.md: %s", folder, e)
