"""The output folder under contention: a second run into it, and a disk that fills as a run ends.

Covered: a second run.py on the same scenario folder is refused at once, before its model is built, while the
first is still building its own (the folder is held from the input checks on); a final run_status.json that
cannot be written (ENOSPC) makes the run exit 1 saying so, and the folder then reads INCOMPLETE for that
reason, never "killed" (the cause a "running" left behind would claim).
"""
from __future__ import annotations

import errno
import subprocess
import sys
import time

import ground.files
import harness.run.backend
import run
from harness.results.run_status import run_state
from tests.test_run_status import ROOT, SCEN, Model, _args, _main

HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
import run, harness.run.backend
from backends.null import NullBackend
def slow_build(config, kind, **kw):
    open("building", "w").close()
    time.sleep(60)                    # the model takes a while to build
harness.run.backend.make_backend = slow_build
sys.exit(run.main(sys.argv[1:]))
"""


def test_a_second_run_is_refused_at_once_while_the_first_builds_its_model(tmp_path, synthetic_coco, fast_conf,
                                                                          capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = _args(tmp_path, synthetic_coco, fast_conf, "--mode", "performance")
    (tmp_path / "holder.py").write_text(HOLDER.format(root=str(ROOT)))
    first = subprocess.Popen([sys.executable, str(tmp_path / "holder.py"), *args], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "building").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()[-2000:]
        built = []

        def build(config, kind, **kw):
            built.append(kind)
            raise RuntimeError("the second run got as far as building its model")

        monkeypatch.setattr(harness.run.backend, "make_backend", build)
        rc, _, err = _main(capsys, args)
    finally:
        first.kill()
        first.wait()
    assert rc == 2 and f"another run (process {first.pid}) is writing to" in err and not built


def test_a_status_the_full_disk_cannot_take_fails_the_run_and_never_reads_killed(tmp_path, synthetic_coco,
                                                                                fast_conf, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(harness.run.backend, "make_backend", lambda config, kind, **kw: Model(config.model))
    real, writes = ground.files.replace_atomically, []

    def disk_fills_after_the_first_status(path, data):
        if path.name == "run_status.json":
            writes.append(path)
            if len(writes) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(ground.files, "replace_atomically", disk_fills_after_the_first_status)
    rc, out, err = _main(capsys, _args(tmp_path, synthetic_coco, fast_conf, "--mode", "performance"))
    assert rc == 1 and "run_status.json" in err and "No space left on device" in err, err[-2000:]
    state = run_state(tmp_path / SCEN / "performance/run_1")
    assert state.label == "INCOMPLETE" and "killed" not in state.reason, state
    assert "could not be recorded" in state.reason and "No space left on device" in state.reason
    assert "it ended finished" in state.reason
    assert run.main(["report", str(tmp_path / "o")]) == 0
