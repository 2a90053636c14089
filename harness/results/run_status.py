"""How each run ended, recorded in its folder: ``run_status.json``.

Lifecycle: :func:`begin_status` writes it as ``"running"`` (with the
environment, see harness/results/environment.py) after the folder was cleared
and before LoadGen starts; :func:`end_status` replaces it when the run ends,
with how: ``finished``, ``failed`` (failed samples, a dead worker, no or an
incomplete mAP, errors LoadGen logged), ``interrupted`` (Ctrl-C or SIGTERM:
the samples not yet computed were answered empty so that LoadGen could end) or
``incomplete`` (LoadGen's logs lost). Both writes are atomic, so the file is
always whole. A signal is recorded as ``interrupted`` at once, before the run
waits for LoadGen to end (``final=False``), and again once it ended. A run
killed outright (``kill -9``, the out-of-memory killer, a power cut) leaves
``"running"`` behind; read back once its process is gone, that is INCOMPLETE.

A disk that fills during the run must not leave ``"running"`` (read later as
killed, the wrong cause): a file not yet final ends in ``RESERVE_BYTES``
spaces (JSON allows them), and when the atomic replacement fails,
:func:`end_status` overwrites those bytes in place, which needs no new room on
the disk, with ``incomplete`` and why, then raises OutputError.

:func:`run_state` turns the file into the one label that ``report``,
``verify`` and ``package`` show instead of LoadGen's VALID:

    FINISHED     ended normally with a model: LoadGen's verdict and the mAP stand
    SIMULATED    ended normally, but the backend runs no model (null, simulated)
    FAILED       ended, but failed samples, a dead worker, no mAP, LoadGen errors
    INTERRUPTED  stopped by Ctrl-C or SIGTERM; LoadGen's figures are of a cut run
    INCOMPLETE   killed, logs lost, or no status recorded (an older harness)
    RUNNING      its process is running it now

Assumption: a process is identified by pid, host name and (Linux) its start
time in ``/proc``, so a reused pid is not taken for the run's own.
"""
from __future__ import annotations

import errno
import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# read_status lives in layout.py, which also reads the file to tell this harness's run folders apart.
from harness.results.layout import (
    DETAIL_LOG,
    RUN_DIRS,
    STATUS_NAME,
    WRITER,
    read_status,
)
from ground.errors import OutputError
from ground.files import write_text_atomic

FORMAT = 1
COMPLETE = ("FINISHED", "SIMULATED")


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="milliseconds")


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]   # field 22 of stat(5), counted after the command name


def begin_status(out_dir: Path, mode: str, scenario: str, environment: dict[str, Any]) -> dict[str, Any]:
    """Write ``run_status.json`` as running; returns its content for :func:`end_status`. OutputError on failure."""
    doc = {"written_by": WRITER, "format": FORMAT, "status": "running", "mode": mode, "scenario": scenario,
           "started": _now(), "ended": None, "pid": os.getpid(), "host": socket.gethostname(),
           "process_start": _process_start(os.getpid()), "reasons": [], "loadgen_finished": None,
           "environment": environment}
    write_text_atomic(out_dir / STATUS_NAME, _text(doc, final=False))
    return doc


def end_status(out_dir: Path, doc: dict[str, Any], status: str, reasons: list[str],
               loadgen_finished: bool, final: bool = True) -> None:
    """Replace ``run_status.json`` with how the run ended (``final`` False: so far, to be replaced again):
    ``status`` is finished, failed, interrupted or incomplete; ``reasons`` one line each (empty when finished).

    OutputError when it cannot be replaced; the file then says ``incomplete`` and why, where the room
    reserved in it allows (see the module docstring).
    """
    done = {**doc, "status": status, "reasons": reasons, "ended": _now(), "loadgen_finished": loadgen_finished}
    path = out_dir / STATUS_NAME
    try:
        write_text_atomic(path, _text(done, final))
    except OutputError as e:
        outcome = f"it ended {status}" + (f" ({'; '.join(reasons)})" if reasons else "")
        stuck = {**done, "status": "incomplete",
                 "reasons": [f"how this run ended could not be recorded: {e}"[:RESERVE_BYTES // 2],
                             outcome[:RESERVE_BYTES // 4]]}
        try:
            try:
                _overwrite_in_place(path, json.dumps(stuck, separators=(",", ":")) + "\n")
            except OSError:   # no room for the environment as well
                _overwrite_in_place(path, json.dumps({**stuck, "environment": {}}, separators=(",", ":")) + "\n")
        except OSError as again:
            raise OutputError(f"{e}; {path} still reads as running ({again.strerror or again})") from None
        raise OutputError(f"{e}; {path} now says so in place of the record of the run") from None


RESERVE_BYTES = 2048   # trailing spaces of a status not yet final: room to say "incomplete" on a full disk


def _text(doc: dict[str, Any], final: bool) -> str:
    return json.dumps(doc, indent=1) + "\n" + ("" if final else " " * RESERVE_BYTES + "\n")


def _overwrite_in_place(path: Path, text: str) -> None:
    """Write ``text`` over the start of ``path``, spaces over the rest: no new blocks, so also on a full disk.
    Not atomic (a crash meanwhile may leave it unreadable); used only when the atomic replacement failed."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY)
    try:
        size = os.fstat(fd).st_size
        if len(data) > size:
            raise OSError(errno.ENOSPC, f"{len(data)} bytes do not fit in the {size} of the file")
        os.pwrite(fd, data + b" " * (size - len(data)), 0)
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class RunState:
    label: str                        # see the module docstring
    reason: str                       # one line; empty for FINISHED
    status: dict[str, Any] | None     # run_status.json's content

    @property
    def is_result(self) -> bool:
        """Only a finished run of a model is a result (LoadGen's VALID/INVALID and the mAP stand)."""
        return self.label == "FINISHED"

    @property
    def complete(self) -> bool:
        """Finished, with a model or a simulated one."""
        return self.label in COMPLETE

    def line(self) -> str:
        return f"{self.label}: {self.reason}" if self.reason else self.label


def _alive(doc: dict[str, Any]) -> bool | None:
    """Whether the process that wrote ``doc`` still runs; None when it ran on another host."""
    if doc.get("host") != socket.gethostname():
        return None
    pid = int(doc.get("pid") or 0)
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = doc.get("process_start")
    return started is None or _process_start(pid) in (None, started)


def run_state(out_dir: Path) -> RunState:
    """The label of the run in ``out_dir``, from its run_status.json (see the module docstring)."""
    doc = read_status(out_dir)
    if doc is None:
        return RunState("INCOMPLETE", f"no {STATUS_NAME}: how this run ended was not recorded (a run of an "
                                      "earlier harness version, or a copy without that file); rerun it", None)
    status, env = doc.get("status"), doc.get("environment") or {}
    reasons = "; ".join(doc.get("reasons") or [])
    if status == "finished":
        if env.get("simulated", True):
            return RunState("SIMULATED", f"backend {env.get('backend', '?')} runs no model: its figures measure "
                                         "the harness, not a detector", doc)
        return RunState("FINISHED", "", doc)
    if status in ("failed", "interrupted", "incomplete"):
        return RunState(status.upper(), reasons or status, doc)
    if status == "running":
        alive = _alive(doc)
        if alive is None:
            return RunState("INCOMPLETE", f"recorded as running on host {doc.get('host')} (not this machine): "
                                          "still running there, or killed", doc)
        if alive:
            return RunState("RUNNING", f"process {doc.get('pid')} is running it (started {doc.get('started')})", doc)
        return RunState("INCOMPLETE", f"killed: process {doc.get('pid')} ended without recording how the run "
                                      f"ended (started {doc.get('started')}; kill -9, out of memory or power loss)",
                        doc)
    return RunState("INCOMPLETE", f"unknown status {status!r} in {STATUS_NAME}", doc)


def audit_is_stale(scenario_folder: Path, test: str) -> bool:
    """Whether the performance run is newer than the ``test`` audit run (the audit compared another run)."""
    perf = scenario_folder.joinpath(*RUN_DIRS["performance"])
    audit = scenario_folder.joinpath(*RUN_DIRS[test])
    started = [(read_status(d) or {}).get("started") for d in (perf, audit)]
    if all(started):
        return datetime.fromisoformat(started[0]) > datetime.fromisoformat(started[1])
    times = [(d / DETAIL_LOG).stat().st_mtime_ns for d in (perf, audit) if (d / DETAIL_LOG).is_file()]
    return len(times) == 2 and times[0] > times[1]
