"""What the harness itself records in a run folder, and the check that LoadGen's logs are complete.

Per LoadGen run, beside LoadGen's logs:

- ``run_record.json``: mode, what interrupted the run (Ctrl-C, SIGTERM: a run
  stopped so, or by a dead worker, gets one too, with what was computed until
  then), samples issued, seconds, failed samples (count and the first
  ``MAX_RECORDED_FAILURES`` with index, stage and error), why a worker died,
  out-of-memory batches, why accuracy was not computed;
- ``latencies_s.npy``: float32 issue-to-completion seconds per completed sample
  (timed runs), from which the report draws its latency histogram.

Both are written atomically, so a full disk never leaves a half-written file.

LoadGen writes its logs from its own thread and never reports a failed write:
a run folder removed during the run, or a full disk, shows up only as missing
or incomplete files. :func:`check_run_logs` turns that into an
:class:`~harness.layout.OutputError` naming the folder, before anything is
read from it. Complete means: the summary is not empty and the detail log
ends with one of LoadGen's closing records.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from harness.results.layout import LATENCIES_NAME, RECORD_NAME
from harness.results.result_types import LoadGenRun
from ground.errors import OutputError
from ground.files import space_hint, write_text_atomic

MAX_RECORDED_FAILURES = 50
_TAIL_BYTES = 64 * 1024
# LoadGen's last detail records: "num_errors" after a performance run's results, "power_end" after an accuracy run.
_CLOSING_KEYS = (b'"key": "num_errors"', b'"key": "power_end"')


def check_run_logs(out_dir: Path) -> None:
    """Raise OutputError unless ``out_dir`` still holds complete LoadGen logs."""
    if not out_dir.is_dir():
        raise OutputError(f"the run folder {out_dir} disappeared during the run: this run's LoadGen logs are "
                          "lost (runs finished earlier keep their folders); keep the output folder in place "
                          "while a run is going")
    summary, detail = out_dir / "mlperf_log_summary.txt", out_dir / "mlperf_log_detail.txt"
    problem = None
    if not summary.is_file() or summary.stat().st_size == 0:
        problem = f"{summary.name} is missing or empty"
    elif not detail.is_file() or not any(key in _tail(detail) for key in _CLOSING_KEYS):
        problem = f"{detail.name} is missing or cut short"
    if problem:
        raise OutputError(f"LoadGen could not write its logs in {out_dir} ({problem}{space_hint(out_dir)}): "
                          "this run's results are incomplete; runs finished earlier are intact")


def _tail(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - _TAIL_BYTES))
        return f.read()


def run_record(run: LoadGenRun, interrupted: str | None = None) -> dict[str, Any]:
    """The record of ``run``; ``interrupted``: what stopped it ("terminated (SIGTERM)"), None when nothing did."""
    return {"mode": run.mode, "interrupted": interrupted, "issued": run.issued, "seconds": round(run.seconds, 3),
            "completed": len(run.latencies_s), "failed": len(run.failures),
            "failures": [{"index": f.index, "stage": f.stage, "error": f.error}
                         for f in run.failures[:MAX_RECORDED_FAILURES]],
            "worker_error": run.worker_error, "oom_batches": run.oom_batches,
            "recomputed_batches": run.recomputed_batches,
            "workers": run.workers, "lost_workers": run.lost_workers,
            "accuracy_error": run.accuracy_error}


def write_run_record(run: LoadGenRun, interrupted: str | None = None) -> None:
    """Write ``run_record.json`` and (timed runs) ``latencies_s.npy`` into the run's folder."""
    write_text_atomic(run.out_dir / RECORD_NAME, json.dumps(run_record(run, interrupted), indent=1) + "\n")
    if run.mode != "accuracy" and run.latencies_s:
        buf = io.BytesIO()
        np.save(buf, np.asarray(run.latencies_s, dtype=np.float32))
        write_text_atomic(run.out_dir / LATENCIES_NAME, buf.getvalue())


def read_run_record(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / RECORD_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
