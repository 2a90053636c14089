"""The output folder under contention: a second run into it, the folder removed or the disk full mid-run, and a
disk that fills as a run ends.

Covered: a second run.py on the same scenario folder is refused at once, before its model is built, while the
first is still building its own (the folder is held from the input checks on); a final run_status.json that
cannot be written (ENOSPC) makes the run exit 1 saying so, and the folder then reads INCOMPLETE for that
reason, never "killed" (the cause a "running" left behind would claim).
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ground.files
import harness.run.backend
import run
from backends.null import NullBackend
from ground.errors import OutputError
from ground.files import write_text_atomic
from harness.results.run_status import run_state
from harness.run.benchmark import run_benchmark
from harness.run.dataset import Dataset
from qsl.memory_qsl import MemoryQSL
from tests.test_faults import _config
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


class RemovesFolderDuringPerformanceRun(NullBackend):
    def __init__(self, scenario_dir: Path, **kw):
        super().__init__(**kw)
        self.scenario_dir = scenario_dir

    def predict(self, images, image_hw):
        perf = self.scenario_dir / "performance"
        if (self.scenario_dir / "accuracy" / "run_record.json").exists() and perf.exists():
            shutil.rmtree(perf)
        return super().predict(images, image_hw)


def test_run_folder_removed_mid_run_is_a_clear_error(tmp_path, fast_conf, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scen = tmp_path / "out/default/ssd-resnet34/Offline"
    config = _config(tmp_path, fast_conf, mode="submission", rules="none")
    with pytest.raises(OutputError, match=r"run folder .*performance/run_1 disappeared during the run") as e:
        run_benchmark(config, RemovesFolderDuringPerformanceRun(scen, latency_ms=1.0), Dataset(MemoryQSL(20)))
    assert [r.mode for r in e.value.result.runs] == ["accuracy"]
    for name in ("mlperf_log_accuracy.json", "mlperf_log_summary.txt", "run_record.json"):
        assert (scen / "accuracy" / name).stat().st_size > 0, name                  # earlier run intact


def test_full_disk_for_loadgen_logs_is_a_clear_error(tmp_path, fast_conf, monkeypatch):
    """LoadGen never reports failed writes: its logs pointing at /dev/full (ENOSPC on every write) is caught."""
    from harness.run import loadgen_run
    monkeypatch.chdir(tmp_path)
    clear_run = loadgen_run.clear_run

    def clear_then_fill_the_disk(folder, mode):      # after the rerun's clean-up: it removes earlier logs
        removed = clear_run(folder, mode)
        if mode == "performance":
            for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
                (folder / name).symlink_to("/dev/full")
        return removed

    monkeypatch.setattr(loadgen_run, "clear_run", clear_then_fill_the_disk)
    with pytest.raises(OutputError, match=r"LoadGen could not write its logs in .*run_1 \(mlperf_log_summary.txt "
                                          r"is missing or empty: \d+ MB free on that disk\)") as e:
        run_benchmark(_config(tmp_path, fast_conf, mode="submission", rules="none"), NullBackend(latency_ms=1.0),
                      Dataset(MemoryQSL(20)))
    acc = e.value.result.runs[0].out_dir
    assert (acc / "mlperf_log_summary.txt").stat().st_size > 0
    from harness.results.run_status import run_state
    perf = acc.parent / "performance" / "run_1"
    assert run_state(perf).label == "INCOMPLETE" and "could not write its logs" in run_state(perf).reason


def test_atomic_write_keeps_the_earlier_file_when_the_disk_is_full(tmp_path, monkeypatch):
    target = tmp_path / "accuracy.txt"
    target.write_text("mAP=20.000%\n")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match=r"cannot write .*accuracy.txt \(No space left on device\): \d+ MB free"):
        write_text_atomic(target, "mAP=21.000%\n")
    monkeypatch.undo()
    assert target.read_text() == "mAP=20.000%\n" and list(tmp_path.iterdir()) == [target]


def test_a_second_process_writing_the_same_scenario_folder_is_refused(tmp_path, fast_conf, monkeypatch):
    """Another process holding the scenario folder (flock binds open files, so a lock taken here on a file of its
    own stands in; exclusive_scenario itself is re-entrant within a process)."""
    from ground.files import open_lock, take
    from harness.results.layout import RUN_LOCK, scenario_dir
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, fast_conf)
    folder = scenario_dir(tmp_path / "out", "default", "Offline")
    folder.mkdir(parents=True)
    fd = open_lock(folder / RUN_LOCK)
    try:
        assert take(fd) is None
        with pytest.raises(OutputError, match=rf"another run \(process {os.getpid()}\) is writing to .*Offline"):
            run_benchmark(config, NullBackend(), Dataset(MemoryQSL(8)))
        assert not (folder / "performance").exists()                 # refused before writing anything
    finally:
        os.close(fd)
    assert run_benchmark(config, NullBackend(), Dataset(MemoryQSL(8))).exit_code == 0   # free again
    assert (folder / RUN_LOCK).is_file()
