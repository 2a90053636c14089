"""Where a run writes: the MLPerf submission layout, created and checked up front.

    <output>/<system>/ssd-resnet34/<scenario>/accuracy/          accuracy run
    <output>/<system>/ssd-resnet34/<scenario>/performance/run_1/ performance run
    <output>/<system>/ssd-resnet34/<scenario>/performance/find_peak/  find-peak search
    <output>/<system>/ssd-resnet34/<scenario>/TEST01/performance/run_1/  TEST01 audit run
        (its sampled accuracy log moves to TEST01/accuracy/, verify_*.txt in TEST01/)
    <output>/<system>/ssd-resnet34/<scenario>/TEST04/performance/run_1/  TEST04 audit run

LoadGen silently skips its logs when the folder does not exist, so every run
folder is created, and proven writable, before LoadGen starts.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from harness.settings.loadgen import LOADGEN_MODEL
from harness.shared.errors import OutputError
from harness.shared.files import open_lock, prove_writable, take

RUN_DIRS = {"accuracy": ("accuracy",), "performance": ("performance", "run_1"),
            "find-peak": ("performance", "find_peak"),
            "TEST01": ("TEST01", "performance", "run_1"), "TEST04": ("TEST04", "performance", "run_1")}


RUN_LOCK = ".run.lock"


@contextlib.contextmanager
def exclusive_scenario(folder: Path):
    """Hold ``<folder>/.run.lock`` while runs write into the scenario folder ``folder``.

    A second process running the same scenario into the same output would share
    the run folders and overwrite the first one's logs; it is refused at once,
    before it writes anything. The kernel drops the lock when its holder exits.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = open_lock(folder / RUN_LOCK)
    except OSError as e:
        raise OutputError(f"cannot write results to {folder} ({e.strerror or e}): pass --output with a "
                          "writable folder") from None
    try:
        holder = take(fd)
        if holder is not None:
            raise OutputError(f"another run (process {holder}) is writing to {folder}: wait for it to end, or "
                              "pass another --output or --system-name")
        yield folder
    finally:
        os.close(fd)


def scenario_dir(output: str | Path, system: str, scenario: str) -> Path:
    return Path(output) / system / LOADGEN_MODEL / scenario


def run_dir(output: str | Path, system: str, scenario: str, mode: str) -> Path:
    """The folder for one LoadGen run of ``mode`` (accuracy, performance, find-peak, TEST01 or TEST04)."""
    return scenario_dir(output, system, scenario).joinpath(*RUN_DIRS[mode])


def prepare_run_dir(path: Path, user_conf: str | Path) -> Path:
    """Create ``path``, prove it writable, and copy the user.conf used beside the logs."""
    try:
        prove_writable(path)
        shutil.copyfile(user_conf, path / "user.conf")
    except OSError as e:
        raise OutputError(f"cannot write results to {path} ({e.strerror or e}): pass --output with a "
                          "writable folder") from None
    return path
