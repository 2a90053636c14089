"""--executor as a user runs it: a local run never imports Ray; a Ray run starts a local Ray and stops it."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _argv(data: Path, conf: Path, out: Path, *flags: str) -> list[str]:
    return ["--backend", "null", "--data", str(data), "--user-conf", str(conf), "--output", str(out), *flags]


def test_a_local_run_never_imports_ray(synthetic_coco, fast_conf, tmp_path):
    argv = _argv(synthetic_coco, fast_conf, tmp_path, "--executor", "local")
    done = _run(f"import sys, run; code = run.main({argv!r}); "
                "print('ray imported' if any(m == 'ray' or m.startswith('ray.') for m in sys.modules) else 'no ray'); "
                "sys.exit(code)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "no ray"


def _alive(session_suffix: str) -> list[str]:
    """Command lines of processes that belong to the Ray session whose folder ends with ``session_suffix``."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in ps if f"{session_suffix} " in line + " " or f"{session_suffix}/" in line]


def test_a_ray_run_starts_a_local_ray_and_stops_it(synthetic_coco, fast_conf, tmp_path):
    argv = _argv(synthetic_coco, fast_conf, tmp_path, "--executor", "ray", "--ray-workers", "2")
    proc = subprocess.Popen([sys.executable, "run.py", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert "(backend null on Ray, 2 workers on 1 node, SIMULATED" in out and "failed samples: 0" in out
    # Ray names its session folder after the process that started it: nothing of that session is left.
    deadline = time.monotonic() + 20
    while _alive(f"_{proc.pid}") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _alive(f"_{proc.pid}") == []
