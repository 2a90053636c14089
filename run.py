"""Two-scale SSD under MLPerf LoadGen: benchmark runs and direct evaluation.

    python run.py --scenario Offline --mode performance --data DIR --model CKPT --output DIR [flags]
    python run.py evaluate --data DIR --model CKPT [flags] --dump-detections FILE
    python run.py demo    (the embedded default: demo data and model shipped with the project)

The work lives in harness/ (``harness.runner.run_benchmark``,
``harness.evaluate.evaluate_direct``); this file only parses flags, turns bad
input into one clear line with exit status 2, and prints the summary.
Exit status: 0 done, 1 failed samples or no accuracy figure, 2 bad input, 130 interrupted.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from harness.cli import UsageError, add_common_args, benchmark_parser, config_from_args
from harness.config import Config, ConfigError


def _input_errors() -> tuple[type[BaseException], ...]:
    """Every error class that means 'the input is wrong' rather than 'the code is wrong'."""
    from backends.ssd.checkpoint import CheckpointError
    from backends.ssd.default_boxes import GeometryError
    from harness.coco_eval import AccuracyError
    from harness.layout import OutputError
    from harness.settings import SettingsError
    from qsl.cache import CacheError
    return (UsageError, ConfigError, SettingsError, OutputError, CacheError, CheckpointError, GeometryError,
            AccuracyError)


def make_backend(config: Config, kind: str):
    """The backend named by --backend, loaded and warmed up."""
    if kind == "null":
        from backends.null import NullBackend
        return NullBackend(config.model)
    from harness.runner import build_backend
    return build_backend(config)


def benchmark_main(argv: list[str]) -> int:
    from harness.report import format_summary
    from harness.runner import Interrupted, run_benchmark
    args = benchmark_parser().parse_args(argv)
    config = config_from_args(args)
    try:
        result = run_benchmark(config, backend=make_backend(config, args.backend),
                               use_pycocotools=args.use_pycocotools, progress=sys.stderr.isatty())
    except Interrupted as e:
        result = getattr(e, "result", None)
        if result is not None:
            print(format_summary(result), flush=True)
        if not e.finished:  # LoadGen still holds the SUT: leave without tearing it down
            sys.stderr.flush()
            os._exit(130)
        return 130
    print(format_summary(result))
    return result.exit_code


def evaluate_main(argv: list[str]) -> int:
    from harness.dataset import open_dataset
    from harness.evaluate import evaluate_direct
    p = argparse.ArgumentParser(prog="run.py evaluate", description="COCO mAP of the model, without LoadGen.")
    p.add_argument("--dump-detections", metavar="FILE", help="write the COCO results list (JSON) here")
    add_common_args(p)
    args = p.parse_args(argv)
    config = config_from_args(args)
    backend = make_backend(config, args.backend)
    dataset = open_dataset(config.data, backend.sizes)
    report = evaluate_direct(backend, dataset, config.run.batch_size, args.dump_detections, args.use_pycocotools)
    print("\n".join(report.lines()))
    return 0


# Subcommands by first argument; anything else is a benchmark run.
def demo_main(argv: list[str]) -> int:
    from harness.demo import main
    return main(argv)


SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {"evaluate": evaluate_main, "demo": demo_main}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    handler = SUBCOMMANDS.get(argv[0]) if argv else None
    try:
        return handler(argv[1:]) if handler else benchmark_main(argv)
    except _input_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
