"""Two-scale SSD under MLPerf LoadGen: benchmark runs and direct evaluation.

    python run.py --scenario Offline --mode performance --data DIR --model CKPT --output DIR [flags]
    python run.py evaluate --data DIR --model CKPT [flags] --dump-detections FILE
    python run.py demo    (the embedded default: demo data and model shipped with the project)
    python run.py report DIR              (rebuild report.md for earlier runs under DIR)
    python run.py package RESULTS OUT     (submission copy, accuracy logs truncated and hashed)
    python run.py verify DIR [--annotation-file F]  (re-verify the compliance audits under DIR)

``--mode submission`` runs accuracy, performance and the compliance audits of
the rules profile (``--rules``, default v2.0: TEST01, TEST04-A, TEST04-B,
TEST05) for one scenario, and verifies the audits.

The work lives in harness/ (``harness.run.benchmark.run_benchmark``,
``harness.run.evaluate.evaluate_direct``); this file only parses flags, turns bad
input into one clear line with exit status 2, and prints the summary.
Exit statuses (the table for every subcommand is in ground/errors.py and docs/run-status.md):
0 done, 1 not a whole result (failed samples, no or an incomplete mAP, a LoadGen error, a failed
audit, a run ended by a fault), 2 bad input (also ``package`` refusing a tree), 130 interrupted
(SIGINT), 143 terminated (SIGTERM).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any, Callable

from harness.settings.cli import UsageError, backend_options, config_from_args, model_keys_given
from harness.settings.flags import add_common_args, benchmark_parser
from ground.errors import INTERRUPTS, ExitStatus, InputError, RunStopped

NOTHING_TO_RUN = ("nothing to run: try `python run.py demo` (the shipped demo detector on generated data, nothing "
                  "to download) or `python run.py --help` for a benchmark run on your own data")

_signal_exit = {"code": 130}   # 143 once SIGTERM arrived


def _on_sigterm(signum, frame) -> None:
    """SIGTERM ends a run like Ctrl-C: outstanding samples complete, logs close, exit status 143."""
    from harness.run.loadgen_thread import Terminated
    _signal_exit["code"] = 128 + signum
    raise Terminated


def benchmark_main(argv: list[str]) -> int:
    if not argv:
        raise UsageError(NOTHING_TO_RUN)
    args = benchmark_parser().parse_args(argv)
    config = config_from_args(args)
    options = backend_options(args)
    # Every input is checked before anything slow: torch is imported only once the flags are known to be good.
    from harness.results.layout import exclusive_scenario, scenario_dir
    from harness.run.preflight import check_inputs, check_loadgen_inputs
    check_loadgen_inputs(config)   # user.conf and the output folder, before the folder is made for the lock
    run = config.run
    with exclusive_scenario(scenario_dir(run.output_dir, run.system_name, run.scenario)):
        return _benchmark(args, check_inputs(config, model_keys_given(args), args.backend), options)


def _benchmark(args: argparse.Namespace, config: Any, options: dict[str, Any]) -> int:
    """:func:`benchmark_main` once the inputs are checked, the scenario folder held (a second run into it is
    refused at once, not after this one's model is built)."""
    from harness.report.summary import format_summary
    from harness.run.backend import close_backend, make_backend
    from harness.run.benchmark import run_benchmark
    from harness.run.loadgen_thread import Interrupted, WorkerDied
    from ground.errors import OutputError
    backend = make_backend(config, args.backend, **options)
    try:
        result = run_benchmark(config, backend=backend, use_pycocotools=args.use_pycocotools, progress=True)
    except (Interrupted, WorkerDied, OutputError) as e:
        result = getattr(e, "result", None)
        if result is None:
            raise
        print(format_summary(result), flush=True)
        code = e.exit_code if isinstance(e, Interrupted) else 1
        if isinstance(e, OutputError):
            print(f"error: {e}", file=sys.stderr)
        elif not e.finished:  # LoadGen still holds the SUT: leave without tearing it down
            print(f"error: {e.how if isinstance(e, Interrupted) else e}; LoadGen was still running, exiting without "
                  "waiting for it (its logs so far are on disk)", file=sys.stderr, flush=True)
            _leave_now(code)
        return code
    finally:
        close_backend(backend)
    print(format_summary(result))
    return result.exit_code


def evaluate_main(argv: list[str]) -> int:
    from ground.files import check_output_file
    p = argparse.ArgumentParser(prog="run.py evaluate", description="COCO mAP of the model, without LoadGen.")
    p.add_argument("--dump-detections", metavar="FILE", help="write the COCO results list (JSON) here")
    add_common_args(p)
    args = p.parse_args(argv)
    config = config_from_args(args)
    options = backend_options(args)
    if args.dump_detections:   # before the model loads and the cache is made
        check_output_file(args.dump_detections, "--dump-detections")
    from harness.run.preflight import check_inputs
    config = check_inputs(config, model_keys_given(args), args.backend, loadgen=False)
    from harness.accuracy.coco import MapNotComputed
    from harness.run.backend import close_backend, make_backend
    from harness.run.dataset import open_dataset, pin_memory_for
    from harness.run.evaluate import evaluate_direct
    backend = make_backend(config, args.backend, **options)
    try:
        dataset = open_dataset(config.data, backend.sizes, pin_memory=pin_memory_for(backend))
        report = evaluate_direct(backend, dataset, config.run.batch_size, args.dump_detections,
                                 args.use_pycocotools)
    except MapNotComputed as e:   # the input was fine; there is just no figure (exit 1, as for a run)
        print(f"mAP not computed: {e}", file=sys.stderr)
        return 1
    finally:
        close_backend(backend)
    print("\n".join(report.lines()))
    return 1 if report.incomplete else 0


def demo_main(argv: list[str]) -> int:
    from harness.demo.command import main
    return main(argv)


def _harness_runs(path: str) -> list:
    """The scenario folders with runs this harness made at or under ``path``; says on stderr what it skipped."""
    from harness.results.layout import find_runs
    try:
        folders, foreign = find_runs(path)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    for f in foreign:
        print(f"skipped {f}: LoadGen logs not made by this harness (no run_status.json or run_record.json)",
              file=sys.stderr)
    if not folders:
        raise UsageError(f"no runs made by this harness under {path}" + (f" ({len(foreign)} other LoadGen "
                                                                          "folder(s) skipped)" if foreign else ""))
    return folders


def report_main(argv: list[str]) -> int:
    from harness.report.markdown import write_report
    p = argparse.ArgumentParser(prog="run.py report", description="Rebuild report.md for earlier runs.")
    p.add_argument("dir", help="a results root, a scenario folder or a run folder")
    args = p.parse_args(argv)
    for folder in _harness_runs(args.dir):
        print(write_report(folder))
    return 0


def package_main(argv: list[str]) -> int:
    from harness.compliance.package import (
        DEFAULT_IMPLEMENTATION,
        DEFAULT_SUBMITTER,
        DIVISIONS,
        package_submission,
    )
    from harness.compliance.system_desc import SYSTEM_STATUSES, SYSTEM_TYPES
    p = argparse.ArgumentParser(prog="run.py package",
                                description="Write the MLPerf submission tree of --mode submission runs.")
    p.add_argument("results", help="results root (the --output of the runs)")
    p.add_argument("out", help="new folder: the root of the submission (<division>/<submitter>/... inside)")
    p.add_argument("--division", default="closed", choices=DIVISIONS)
    p.add_argument("--submitter", default=DEFAULT_SUBMITTER, help=f"organization folder (default {DEFAULT_SUBMITTER})")
    p.add_argument("--implementation", default=DEFAULT_IMPLEMENTATION,
                   help=f"implementation name in file names and code/ (default {DEFAULT_IMPLEMENTATION})")
    p.add_argument("--status", default="rdi", choices=SYSTEM_STATUSES, help="the system's availability (default rdi)")
    p.add_argument("--system-type", default="edge", choices=SYSTEM_TYPES, help="default edge")
    p.add_argument("--allow-failed-audits", action="store_true",
                   help="copy audits whose verdict is a failure as they are (the checker then reports them)")
    args = p.parse_args(argv)
    done = package_submission(args.results, args.out, args.division, args.submitter, args.implementation,
                              args.status, args.system_type, args.allow_failed_audits)
    print(f"submission tree: {done.root}")
    for t in done.truncated:
        print(f"{t.target}: truncated from {t.original_bytes} bytes, sha256 {t.sha256}")
    for path in done.written:
        print(f"{path}: written from the runs' own files; check it")
    for what in done.skipped:
        print(f"not copied: {what}")
    print("still to add before MLPerf's submission checker passes:")
    for what in done.todo:
        print(f"  {what}")
    return 0


def verify_main(argv: list[str]) -> int:
    from harness.compliance.verify import verify_audit
    from harness.report.markdown import write_report
    from harness.settings.rules import AUDITS
    p = argparse.ArgumentParser(prog="run.py verify", description="Verify the compliance audits of earlier runs.")
    p.add_argument("dir", help="a results root or scenario folder holding accuracy/, performance/run_1/, TEST0x/")
    p.add_argument("--annotation-file", help="COCO annotations for TEST01's mAP fallback (default: none)")
    args = p.parse_args(argv)
    folders = [f for f in _harness_runs(args.dir) if any((f / test).is_dir() for test in AUDITS)]
    if not folders:
        raise UsageError(f"no audit folders ({', '.join(AUDITS)}) under {args.dir}")
    passed = True
    for folder in folders:
        for test in AUDITS:
            if (folder / test).is_dir():
                audit = verify_audit(test, folder, args.annotation_file)
                passed &= audit.passed
                print(f"{folder}: " + "; ".join(audit.lines()))
        write_report(folder)
    return 0 if passed else 1


# Subcommands by first argument; anything else is a benchmark run.
SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {"evaluate": evaluate_main, "demo": demo_main,
                                                      "report": report_main, "package": package_main,
                                                      "verify": verify_main}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    handler = SUBCOMMANDS.get(argv[0]) if argv else None
    _signal_exit["code"] = 130
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if threading_is_main() else None
    exits = sys.modules.get("harness.run.process_exit")   # imported by an earlier call in this process
    first_test = exits.tests_started() if exits is not None else 0
    try:
        code = handler(argv[1:]) if handler else benchmark_main(argv)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        code = ExitStatus.BAD_INPUT
    except KeyboardInterrupt:
        print(INTERRUPTS[_signal_exit["code"]], file=sys.stderr)
        code = _signal_exit["code"]
    except RunStopped as e:    # a run inside another subcommand (demo) stopped: its own exit status
        print(f"error: {e}", file=sys.stderr, flush=True)
        if not e.finished:     # LoadGen still holds the SUT: leave without tearing it down
            _leave_now(e.exit_code)
        code = e.exit_code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    _leave_now_if_running(code, first_test)
    return code


def _leave_now(code: int) -> None:
    from harness.run.process_exit import leave_now
    leave_now(code)


def _leave_now_if_running(code: int, first_test: int) -> None:
    """After a signal, a batch may still compute inside torch (or LoadGen still run): Python's teardown under it
    would abort (exit 134) long after the run said how it ended, so the process leaves now, with ``code``.
    Only LoadGen tests this call started count (``first_test`` on)."""
    exits = sys.modules.get("harness.run.process_exit")   # not imported: no LoadGen run in this process
    if exits is not None and exits.still_running(0.5, since=first_test):
        exits.leave_now(code)


def threading_is_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
