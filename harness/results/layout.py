"""Where a run writes: the MLPerf submission layout, created and checked up front, cleared before a rerun.

    <output>/<system>/ssd-resnet34/<scenario>/accuracy/          accuracy run
    <output>/<system>/ssd-resnet34/<scenario>/performance/run_1/ performance run
    <output>/<system>/ssd-resnet34/<scenario>/performance/find_peak/  find-peak search
    <output>/<system>/ssd-resnet34/<scenario>/<TEST>/             an audit run (TEST01, TEST04-A, ...)

An audit's folder keeps LoadGen's raw output together (summary, detail and,
for TEST01, the sampled accuracy log), as MLPerf's ``run_verification.py``
reads it (``-c <scenario>/TEST01``), with the harness's verify_*.txt beside it;
``run.py package`` lays the copies out as the round's ``compliance/`` tree.

LoadGen silently skips its logs when the folder does not exist, so every run
folder is created, and proven writable, before LoadGen starts.

A rerun of a mode into the same folder first removes every file the earlier
run of that mode left (:func:`clear_run`: LoadGen's logs and the harness's own
files, by name; anything else in the folder stays), so a run that is killed
never leaves the earlier run's mAP or figures beside its own cut logs. Run
folders this harness made are told apart from anyone else's by its own files
(:func:`is_harness_run`), never by LoadGen's logs alone.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from harness.settings.loadgen import LOADGEN_MODEL
from harness.settings.rules import AUDITS
from ground.errors import OutputError
from ground.files import open_lock, prove_writable, read_json_object, take
from ground.names import path_name_problem

RUN_DIRS = {"accuracy": ("accuracy",), "performance": ("performance", "run_1"),
            "find-peak": ("performance", "find_peak"),
            **{test: (test,) for test in AUDITS}}

RUN_LOCK = ".run.lock"

# The files of one run folder, by who writes them.
DETAIL_LOG = "mlperf_log_detail.txt"
SUMMARY_LOG = "mlperf_log_summary.txt"
ACCURACY_LOG = "mlperf_log_accuracy.json"
LOADGEN_FILES = (SUMMARY_LOG, DETAIL_LOG, ACCURACY_LOG, "mlperf_log_trace.json")
STATUS_NAME = "run_status.json"        # how the run ended, and on what (harness/results/run_status.py)
RECORD_NAME = "run_record.json"        # samples issued and failed (harness/results/run_record.py)
LATENCIES_NAME = "latencies_s.npy"     # per-sample latencies of a timed run
LATENCY_PNG = "latency.png"            # their histogram, drawn by the report
ACCURACY_TXT = "accuracy.txt"
WRITER = "ssd-large harness"         # the run_status.json mark of this harness's run folders
RUN_MARKERS = (DETAIL_LOG, STATUS_NAME)   # a folder holding either is a run folder
HARNESS_FILES = (STATUS_NAME, RECORD_NAME, LATENCIES_NAME, LATENCY_PNG, ACCURACY_TXT,
                 "config.json", "user.conf", "harness.log")
VERIFY_ACCURACY = "verify_accuracy.txt"         # TEST01's verdict on the responses (harness/compliance/verdicts.py)
VERIFY_PERFORMANCE = "verify_performance.txt"   # an audit's verdict on the speed
BASELINE_ACCURACY = "baseline_accuracy.txt"       # TEST01's mAP fallback: the subset in the accuracy run
COMPLIANCE_ACCURACY = "compliance_accuracy.txt"   # ... and in the TEST01 run
# What an audit's verification writes into its run folder <scenario>/<TEST>/ besides the run's own files.
AUDIT_FILES = {test: (VERIFY_ACCURACY, VERIFY_PERFORMANCE, BASELINE_ACCURACY, COMPLIANCE_ACCURACY)
               for test in AUDITS}


@contextlib.contextmanager
def exclusive_scenario(folder: Path):
    """Hold ``<folder>/.run.lock`` while runs write into the scenario folder ``folder``.

    A second process running the same scenario into the same output would share
    the run folders and overwrite the first one's logs; it is refused at once,
    before it writes anything. The kernel drops the lock when its holder exits.
    Re-entrant within a process: run.py holds it from its input checks on, so a
    second run is refused before the first one's model is built, and the
    run inside takes it again.
    """
    key = os.path.realpath(folder)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield folder
        finally:
            _HELD[key] -= 1
        return
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
        _HELD[key] = 1
        try:
            yield folder
        finally:
            del _HELD[key]
    finally:
        os.close(fd)


_HELD: dict[str, int] = {}   # scenario folders whose lock this process holds -> how many holders inside it


def scenario_dir(output: str | Path, system: str, scenario: str) -> Path:
    """``<output>/<system>/<model>/<scenario>``; OutputError when a name is not one safe folder name."""
    for what, name in (("system name", system), ("model name", LOADGEN_MODEL), ("scenario", scenario)):
        problem = path_name_problem(name)
        if problem:
            raise OutputError(f"the {what} {name!r} {problem}")
    return Path(output) / system / LOADGEN_MODEL / scenario


def run_dir(output: str | Path, system: str, scenario: str, mode: str) -> Path:
    """The folder for one LoadGen run of ``mode`` (accuracy, performance, find-peak or an audit)."""
    return scenario_dir(output, system, scenario).joinpath(*RUN_DIRS[mode])


def check_run_dir(path: Path) -> Path:
    """Create ``path`` and prove it writable; OutputError naming it otherwise. Writes nothing that stays."""
    try:
        prove_writable(path)
    except OSError as e:
        raise OutputError(f"cannot write results to {path} ({e.strerror or e}): pass --output with a "
                          "writable folder") from None
    return path


def prepare_run_dir(path: Path, user_conf: str | Path) -> Path:
    """Create ``path``, prove it writable, and copy the user.conf used beside the logs."""
    check_run_dir(path)
    try:
        shutil.copyfile(user_conf, path / "user.conf")
    except OSError as e:
        raise OutputError(f"cannot write results to {path} ({e.strerror or e}): pass --output with a "
                          "writable folder") from None
    return path


def clear_run(folder: Path, mode: str) -> list[Path]:
    """Remove what an earlier run of ``mode`` left in its run folder ``folder``; returns the files removed.

    Only the names in LOADGEN_FILES, HARNESS_FILES and (audits) AUDIT_FILES, and their leftover
    ``.<name>.tmp`` files, are removed; anything else stays. OutputError when one cannot be removed.
    """
    names = [folder / n for n in LOADGEN_FILES + HARNESS_FILES]
    names += [folder / n for n in AUDIT_FILES.get(mode, ())]
    removed = []
    for path in names:
        for p in (path, path.with_name(f".{path.name}.tmp")):
            try:
                p.unlink()
            except FileNotFoundError:
                continue
            except OSError as e:
                raise OutputError(f"cannot remove {p} of an earlier run ({e.strerror or e}): a rerun must not "
                                  "leave it beside its own results; make the folder writable") from None
            removed.append(p)
    return removed


def read_status(out_dir: Path) -> dict[str, Any] | None:
    """The run's ``run_status.json`` as written by this harness, or None (missing, unreadable, someone else's).

    Written by harness/results/run_status.py; read here too, where it tells this harness's run folders apart.
    """
    doc = read_json_object(Path(out_dir) / STATUS_NAME)
    return doc if doc is not None and doc.get("written_by") == WRITER else None


def run_rules(out_dir: Path) -> str:
    """The rules profile (harness/settings/rules.py) the run in ``out_dir`` followed, from its ``config.json``;
    "none" for a run from before rules profiles (LoadGen's own settings) or without a readable config."""
    doc = read_json_object(Path(out_dir) / "config.json")
    run = doc.get("run") if doc is not None else None
    return str(run.get("rules") or "none") if isinstance(run, dict) else "none"


def is_harness_run(folder: Path) -> bool:
    """Whether this harness made the run folder ``folder``: it holds the harness's run_status.json
    (marked ``"written_by": WRITER``), or (runs from before that file) its run_record.json. LoadGen's
    logs, or a config.json, prove nothing: other programs write those too."""
    if read_status(folder) is not None:
        return True
    record = read_json_object(folder / RECORD_NAME)
    return record is not None and {"mode", "issued", "failed", "failures"} <= record.keys()


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a run: LoadGen's detail log or the harness's status file (RUN_MARKERS)."""
    return any((folder / name).is_file() for name in RUN_MARKERS)


def scenario_of(run: Path) -> Path | None:
    """The scenario folder of the run folder ``run`` (the longest RUN_DIRS suffix it ends with), or None."""
    for parts in sorted(RUN_DIRS.values(), key=len, reverse=True):
        if len(run.parts) > len(parts) and run.parts[-len(parts):] == parts:
            return run.parents[len(parts) - 1]
    return None


def find_runs(path: str | Path) -> tuple[list[Path], list[Path]]:
    """(scenario folders holding runs this harness made, folders with LoadGen logs it did not make)
    at or under ``path`` (a results root, a scenario folder or one run folder).

    A run folder holds one of RUN_MARKERS: LoadGen's detail log or the harness's status file.
    FileNotFoundError when ``path`` is not a folder.
    """
    path = Path(path).resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder of results")
    runs = {f.parent for marker in RUN_MARKERS for f in path.rglob(marker)}
    found, foreign = set(), set()
    for run in runs:
        if not is_harness_run(run):
            foreign.add(run)
        elif (scenario := scenario_of(run)) is not None:
            found.add(scenario)
    return sorted(found), sorted(foreign)
