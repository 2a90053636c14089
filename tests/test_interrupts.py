"""Ctrl-C and SIGTERM end a run promptly, with readable logs and nothing left outstanding.

Covered: SIGINT and SIGTERM in a child run (exit 130/143, INTERRUPTED said, LoadGen's logs readable); a Ctrl-C
as LoadGen's thread starts (handled as an interrupt, the outstanding sample completed); a slow SingleStream
query in flight (waited for so LoadGen can write its summary); the wait after Ctrl-C (bounded; a second one ends it).
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from backends.null import NullBackend
from harness.run.benchmark import run_benchmark
from harness.run.dataset import Dataset
from qsl.memory_qsl import MemoryQSL
from tests.test_faults import LONG_CONF, ROOT, _config, _run_args


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_end_a_long_run_promptly_with_readable_logs(tmp_path, synthetic_coco, sig, code):
    cmd = [sys.executable, str(ROOT / "run.py"), "--scenario", "Server", "--mode", "performance",
           "--server-target-qps", "50", "--backend", "null", *_run_args(synthetic_coco, tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    run_dir = tmp_path / "o/default/ssd-resnet34/Server/performance/run_1"
    deadline = time.monotonic() + 60
    while not (run_dir / "mlperf_log_detail.txt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 15 and proc.returncode == code, err[-2000:]
    how = "terminated (SIGTERM)" if sig == signal.SIGTERM else "interrupted (Ctrl-C)"
    assert f"INTERRUPTED: the run was {how}" in out and f"exit status {code}" in out
    assert (run_dir / "mlperf_log_detail.txt").read_text().startswith(":::MLLOG")
    log_text = (run_dir / "harness.log").read_text()
    assert how in log_text and "failed in interrupted" not in log_text     # one line, not one per sample
    assert "## performance" in (run_dir.parent.parent / "report.md").read_text()


def test_ctrl_c_while_the_loadgen_thread_starts_is_handled_as_an_interrupt(monkeypatch, tmp_path):
    """A Ctrl-C that lands as Thread.start() returns must close the completer and raise Interrupted,
    not escape as a bare KeyboardInterrupt that tears the SUT down under a running LoadGen."""
    import threading
    from types import SimpleNamespace

    import mlperf_loadgen as lg

    from harness.run.loadgen_thread import Interrupted, start_test
    from harness.sut.completion import Completer, Sample

    release = threading.Event()
    monkeypatch.setattr(lg, "StartTestWithLogSettings", lambda *args: release.wait(10))
    done: list = []
    completer = Completer(done.extend, lambda i, p, n: (i, n))
    completer.register([Sample(7, 3)])
    real_start = threading.Thread.start

    def start_then_interrupt(self):
        real_start(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "start", start_then_interrupt)
    try:
        with pytest.raises(Interrupted) as e:
            start_test(SimpleNamespace(handle=0, completer=completer), 0, None, None, tmp_path / "audit.config")
    finally:
        release.set()
    assert e.value.finished is False          # LoadGen (here: the stand-in) was still running
    assert completer.closed and done == [(7, 0)]   # the outstanding sample completed, empty


class SlowAndInterrupted(NullBackend):
    """Takes longer than the interrupt grace period per query, and presses Ctrl-C during its first one."""

    def predict(self, images, image_hw):
        if self.calls == 0:
            import _thread
            _thread.interrupt_main()
        return super().predict(images, image_hw)


def test_ctrl_c_during_a_slow_stream_query_waits_for_it_so_loadgen_ends(tmp_path, monkeypatch):
    """SingleStream computes on LoadGen's thread: LoadGen can only end once the query in flight is done."""
    from harness.run.loadgen_thread import INTERRUPT_GRACE_S, Interrupted
    monkeypatch.chdir(tmp_path)
    slow_s = INTERRUPT_GRACE_S + 1.5
    t0 = time.monotonic()
    with pytest.raises(Interrupted) as e:
        run_benchmark(_config(tmp_path, LONG_CONF, "SingleStream", singlestream_expected_latency_ms=slow_s * 1e3),
                      SlowAndInterrupted(latency_ms=slow_s * 1e3), Dataset(MemoryQSL(8)))
    assert time.monotonic() - t0 < 30
    assert e.value.finished and e.value.result.interrupted       # LoadGen returned: its summary is written
    out = tmp_path / "out/default/ssd-resnet34/SingleStream/performance/run_1"
    assert (out / "mlperf_log_summary.txt").read_text().startswith("=")


class FakeSUT:
    def __init__(self, busy: bool):
        self.pipeline = type("P", (), {"inline_busy": busy})()


class NeverDone:
    """An Event LoadGen never sets; ``press`` makes its n-th wait raise KeyboardInterrupt (a second Ctrl-C)."""

    def __init__(self, press: int | None = None):
        self.waits, self.press = 0, press

    def wait(self, timeout):
        self.waits += 1
        if self.waits == self.press:
            raise KeyboardInterrupt
        time.sleep(min(timeout, 0.01))
        return False

    def is_set(self):
        return False


def test_the_wait_after_ctrl_c_is_bounded_and_a_second_ctrl_c_ends_it():
    from harness.run.loadgen_thread import wait_after_interrupt
    t0 = time.monotonic()
    assert not wait_after_interrupt(FakeSUT(busy=False), NeverDone(), grace_s=0.01, inflight_s=60)
    assert time.monotonic() - t0 < 1                                   # nothing in flight: the grace only
    t0 = time.monotonic()
    assert not wait_after_interrupt(FakeSUT(busy=True), NeverDone(), grace_s=0.01, inflight_s=0.5)
    assert 0.5 <= time.monotonic() - t0 < 5                            # in flight: waits, but not forever
    t0 = time.monotonic()
    pressed = NeverDone(press=3)
    assert not wait_after_interrupt(FakeSUT(busy=True), pressed, grace_s=0.01, inflight_s=60)
    assert pressed.waits == 3 and time.monotonic() - t0 < 5           # a second Ctrl-C stops waiting
