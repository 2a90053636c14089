"""Faults end a run with a clear cause, nothing lost and no hang.

Covered: samples that raise (counted, with indices, exit 1); a pipeline thread that dies (fast end with the
cause; LoadGen ends cleanly, or the process leaves when LoadGen cannot be stopped); device out of memory
(message naming the batch setting); a truncated QSL cache (found at load). The run folder removed or the disk
full mid-run: test_output_folder.py. Ctrl-C and SIGTERM: test_interrupts.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import run
from backends.null import NullBackend
from harness.report.summary import format_summary
from harness.run.benchmark import run_benchmark
from harness.run.dataset import Dataset
from harness.settings.config import load_config
from qsl.memory_qsl import MemoryQSL
from tests.test_harness_scenarios import HINTS

ROOT = Path(__file__).resolve().parent.parent
LONG_CONF = ROOT / "user.conf"      # the official 600 s runs: a fault must not make anyone wait for them


def _config(tmp_path, conf, scenario="Offline", mode="performance", **run_overrides):
    hints = {**HINTS, **run_overrides}
    return load_config(None, {"run": {"scenario": scenario, "mode": mode, "user_conf": str(conf),
                                      "output_dir": str(tmp_path / "out"), **hints}})


class FailOn(NullBackend):
    def __init__(self, bad, **kw):
        super().__init__(**kw)
        self.bad = set(bad)

    def predict(self, images, image_hw):
        values = {int(v) for v in images[next(iter(images))][:, 0, 0, 0]}    # MemoryQSL: pixel = index % 256
        if values & self.bad:
            raise ValueError(f"cannot decode sample(s) {sorted(values & self.bad)}")
        return super().predict(images, image_hw)


@pytest.mark.parametrize("scenario", ["Server", "MultiStream"])
def test_failing_samples_are_counted_with_indices(tmp_path, fast_conf, scenario, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_benchmark(_config(tmp_path, fast_conf, scenario), FailOn({2, 5}), Dataset(MemoryQSL(30)))
    (r,) = result.runs
    assert {f.index for f in r.failures} == {2, 5} and result.exit_code == 1
    record = json.loads((r.out_dir / "run_record.json").read_text())
    assert record["failed"] == len(r.failures) and {f["index"] for f in record["failures"]} == {2, 5}
    report = (r.out_dir.parent.parent / "report.md").read_text()
    assert "  - sample 2 (predict): ValueError: cannot decode sample(s) [2]" in report


class Fatal(BaseException):
    """Not an Exception: escapes the per-sample retry and kills the pipeline thread."""


class DiesAfter(NullBackend):
    def __init__(self, calls, **kw):
        super().__init__(**kw)
        self.left = calls

    def predict(self, images, image_hw):
        self.left -= 1
        if self.left < 0:
            raise Fatal("the device was lost")
        return super().predict(images, image_hw)


@pytest.mark.parametrize("scenario", ["Offline", "SingleStream"])
def test_dead_worker_ends_the_run_fast_with_its_cause(tmp_path, scenario, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t0 = time.monotonic()
    result = run_benchmark(_config(tmp_path, LONG_CONF, scenario, "submission", rules="none",
                                   offline_expected_qps=100.0, singlestream_expected_latency_ms=500.0),
                           DiesAfter(3), Dataset(MemoryQSL(50)))
    assert time.monotonic() - t0 < 30                   # not the 600 s the settings ask for
    assert [r.mode for r in result.runs] == ["accuracy"]  # the later runs never start
    where = "compute thread died" if scenario == "Offline" else "the work on LoadGen's issue thread failed"
    assert f"{where}: Fatal: the device was lost" in result.error and result.exit_code == 1
    assert "RUN ENDED EARLY" in format_summary(result)
    out = result.runs[0].out_dir
    assert (out / "mlperf_log_summary.txt").stat().st_size > 0          # LoadGen ended and closed its logs
    assert where in json.loads((out / "run_record.json").read_text())["worker_error"]


def _script(tmp_path: Path, backend_src: str) -> Path:
    """A run.py entry point whose backend is ``backend_src`` (a class named B)."""
    path = tmp_path / "entry.py"
    path.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nimport run\nfrom backends.null import NullBackend\n"
                    f"{backend_src}\nimport harness.run.backend\nharness.run.backend.make_backend = lambda config, kind: B()\nsys.exit(run.main(sys.argv[1:]))\n")
    return path


def _run_args(synthetic_coco, tmp_path, *extra):
    return ["--data", str(synthetic_coco), "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "o"),
            "--image-size", "257", "257", *extra]


def test_dead_worker_in_a_server_run_exits_without_waiting_for_loadgen(tmp_path, synthetic_coco):
    """LoadGen paces Server queries by the clock and cannot be aborted from Python: the process leaves."""
    entry = _script(tmp_path, "class B(NullBackend):\n    def predict(self, images, hw):\n"
                              "        raise SystemExit('the device was lost')")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(entry), "--scenario", "Server", "--mode", "performance",
                           "--server-target-qps", "50", "--backend", "null", *_run_args(synthetic_coco, tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert time.monotonic() - t0 < 60 and proc.returncode == 1, proc.stderr[-2000:]
    assert "thread died: SystemExit: the device was lost" in proc.stderr
    assert "LoadGen was still running" in proc.stderr and "ERROR: " in proc.stdout
    detail = tmp_path / "o/default/ssd-resnet34/Server/performance/run_1/mlperf_log_detail.txt"
    assert detail.read_text().startswith(":::MLLOG")


class OutOfMemoryAbove(NullBackend):
    def __init__(self, limit, **kw):
        super().__init__(**kw)
        self.limit = limit

    def predict(self, images, image_hw):
        if image_hw.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().predict(images, image_hw)


def test_out_of_memory_names_the_batch_setting(tmp_path, fast_conf, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_benchmark(_config(tmp_path, fast_conf, batch_size=8), OutOfMemoryAbove(1), Dataset(MemoryQSL(40)))
    (r,) = result.runs                       # batches of 8 fail, the pipeline's per-image retry succeeds
    assert r.failures == [] and r.oom_batches > 0 and result.exit_code == 0
    assert "device out of memory on a batch of 8 image(s) at sizes [32]: lower --batch-size (now 8)" in \
        (r.out_dir / "harness.log").read_text()
    assert "ran out of device memory" in format_summary(result)
    result = run_benchmark(_config(tmp_path, fast_conf, "Server", server_max_batch=4), OutOfMemoryAbove(0),
                           Dataset(MemoryQSL(20)))
    (r,) = result.runs                       # even one image fails: every sample fails with the hint
    assert r.failures and result.exit_code == 1
    assert all("lower --server-max-batch (now 4)" in f.error for f in r.failures)


def test_truncated_cache_is_found_at_load(tmp_path, synthetic_coco, fast_conf, capsys):
    from qsl.cache.reader import CacheError, open_cache
    args = ["--mode", "accuracy", "--backend", "null", "--num-classes", "7", "--user-conf", str(fast_conf),
            *_run_args(synthetic_coco, tmp_path)]
    assert run.main(args) == 0
    first = (tmp_path / "o/default/ssd-resnet34/Offline/accuracy/accuracy.txt").read_text()
    (array,) = (tmp_path / "cache").glob("images_257_*.npy")
    with array.open("r+b") as f:
        f.truncate(array.stat().st_size - 1000)
    with pytest.raises(CacheError, match=r"images_257_8_torchvision.npy is \d+ bytes, its header implies \d+: the file is truncated"):
        open_cache(tmp_path / "cache", [257])
    assert run.main(args) == 0          # found when the cache is opened, rebuilt before LoadGen starts
    assert (tmp_path / "o/default/ssd-resnet34/Offline/accuracy/accuracy.txt").read_text() == first
    open_cache(tmp_path / "cache", [257])


def test_guard_covers_every_worker_of_a_multi_worker_backend():
    """A backend with several compute workers (one per GPU): each is guarded, their OOM batches add up."""
    from harness.sut.out_of_memory import DeviceMemoryError
    from harness.sut.per_image import GuardedBackend

    class TwoWorkers(OutOfMemoryAbove):
        def workers(self):
            return [self, self.twin]

    first, second = TwoWorkers(1), OutOfMemoryAbove(1)
    first.twin = second
    guard = GuardedBackend(first, hint="lower --batch-size (now 4)")
    workers = guard.workers()
    assert workers[0] is guard and workers[1].inner is second
    images, hw = {32: torch.zeros(4, 3, 32, 32, dtype=torch.uint8)}, torch.tensor([[480, 640]] * 4)
    for w in workers:
        with pytest.raises(DeviceMemoryError, match=r"batch of 4 image\(s\) at sizes \[32\]: lower --batch-size"):
            w.predict(images, hw)
    assert guard.oom_batches == 2
    assert len(workers[1].predict({32: images[32][:1]}, hw[:1])) == 1


def test_fewer_images_than_the_performance_sample_count_is_said(tmp_path, fast_conf, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING", logger="harness"):
        run_benchmark(_config(tmp_path, fast_conf), NullBackend(), Dataset(MemoryQSL(8)))
    assert "the data set has 8 images, fewer than the performance sample count 64" in caplog.text
    log_file = tmp_path / "out/default/ssd-resnet34/Offline/performance/run_1/harness.log"
    assert "fewer than the performance sample count" in log_file.read_text()


_DEAD_EARLY = """
import sys
sys.path.insert(0, {root!r})
from pathlib import Path
from backends.null import NullBackend
from harness.run.benchmark import run_benchmark
from harness.run.dataset import Dataset
from harness.settings.config import load_config
from qsl.memory_qsl import MemoryQSL
from tests.conftest import FAST_CONF

class Dies(NullBackend):
    def __init__(self, after):
        super().__init__(latency_ms=1.0)
        self.after = after

    def predict(self, images, hw):
        if self.calls >= self.after:
            raise SystemExit("the device was lost")
        return super().predict(images, hw)

tmp = Path({tmp!r})
(tmp / "fast.conf").write_text(FAST_CONF)
for after in (1, 3):
    cfg = load_config(None, {{"run": {{"scenario": "Offline", "mode": "performance", "batch_size": 8,
                                      "offline_expected_qps": 10000.0, "user_conf": str(tmp / "fast.conf"),
                                      "output_dir": str(tmp / f"out{{after}}")}}}})
    print(run_benchmark(cfg, Dies(after), Dataset(MemoryQSL(100))).exit_code, flush=True)
"""


def test_a_worker_dying_early_in_an_offline_run_does_not_crash_loadgen(tmp_path):
    """The dead thread completed samples (through LoadGen's per-thread logger) and then ended mid-run,
    which crashed LoadGen's logging thread (SIGSEGV) in most runs; now every stage thread lives until the
    pipeline stops."""
    script = tmp_path / "dead_early.py"
    script.write_text(_DEAD_EARLY.format(root=str(ROOT), tmp=str(tmp_path)))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"exit status {proc.returncode}: {proc.stderr[-1500:]}"
    assert proc.stdout.split() == ["1", "1"]
