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

from harness.settings import LOADGEN_MODEL
from qsl.cache_lock import open_lock, take

RUN_DIRS = {"accuracy": ("accuracy",), "performance": ("performance", "run_1"),
            "find-peak": ("performance", "find_peak"),
            "TEST01": ("TEST01", "performance", "run_1"), "TEST04": ("TEST04", "performance", "run_1")}


class OutputError(OSError):
    """The output folder cannot be created or written; the message names it."""


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


def audit_dir(output: str | Path, system: str, scenario: str, test: str) -> Path:
    """The folder of one compliance audit (TEST01, TEST04): verify files, accuracy/ and performance/run_1/."""
    return scenario_dir(output, system, scenario) / test


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``.

    A full disk or a vanished folder leaves the earlier ``path`` untouched; the error names the file.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(f"cannot write {path} ({e.strerror or e}){_space_hint(path)}; files written "
                          "earlier are intact") from None


def _space_hint(path: Path) -> str:
    """', N MB free on that disk' or ', the folder no longer exists'."""
    folder = path.parent
    if not folder.is_dir():
        return ": the folder no longer exists (removed during the run?)"
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f": {free / 1e6:.0f} MB free on that disk"


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
