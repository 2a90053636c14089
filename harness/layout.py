"""Where a run writes: the MLPerf submission layout, created and checked up front.

    <output>/<system>/ssd-resnet34/<scenario>/accuracy/          accuracy run
    <output>/<system>/ssd-resnet34/<scenario>/performance/run_1/ performance run
    <output>/<system>/ssd-resnet34/<scenario>/performance/find_peak/  find-peak search

LoadGen silently skips its logs when the folder does not exist, so every run
folder is created, and proven writable, before LoadGen starts.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from harness.settings import LOADGEN_MODEL

RUN_DIRS = {"accuracy": ("accuracy",), "performance": ("performance", "run_1"),
            "find-peak": ("performance", "find_peak")}


class OutputError(OSError):
    """The output folder cannot be created or written; the message names it."""


def scenario_dir(output: str | Path, system: str, scenario: str) -> Path:
    return Path(output) / system / LOADGEN_MODEL / scenario


def run_dir(output: str | Path, system: str, scenario: str, mode: str) -> Path:
    """The folder for one LoadGen run of ``mode`` (accuracy, performance or find-peak)."""
    return scenario_dir(output, system, scenario).joinpath(*RUN_DIRS[mode])


def prepare_run_dir(path: Path, user_conf: str | Path) -> Path:
    """Create ``path``, prove it writable, and copy the user.conf used beside the logs."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
        shutil.copyfile(user_conf, path / "user.conf")
    except OSError as e:
        raise OutputError(f"cannot write results to {path} ({e.strerror or e}): pass --output with a "
                          "writable folder") from None
    return path
