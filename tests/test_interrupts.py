"""Ctrl-C and SIGTERM end a run promptly, with readable logs and nothing left outstanding.

Covered: SIGINT and SIGTERM in a child run with a batch computing in torch (exit 130/143 within seconds, never
134; INTERRUPTED recorded at once, also when SIGKILL follows; LoadGen's logs readable; run_record.json written);
a Ctrl-C as LoadGen's thread starts (handled as an interrupt, the outstanding sample completed); a slow
SingleStream query in flight (waited for so LoadGen can write its summary); the wait after Ctrl-C (bounded; a
second one ends it); an exception other than Ctrl-C on the main thread while LoadGen runs (no crash).
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from backends.null import NullBackend
from harness.results.run_status import run_state
from harness.run.benchmark import run_benchmark
from harness.run.dataset import Dataset
from qsl.memory_qsl import MemoryQSL
from tests.test_faults import LONG_CONF, ROOT, _config, _run_args


def test_ctrl_c_while_the_loadgen_thread_starts_is_handled_as_an_interrupt(monkeypatch, tmp_path):
    """A Ctrl-C that lands as Thread.start() returns must close the completer and raise Interrupted,
    not escape as a bare KeyboardInterrupt; the SUT and QSL are destroyed only once LoadGen returned."""
    import threading
    from types import SimpleNamespace

    import mlperf_loadgen as lg

    from harness.run.loadgen_thread import Interrupted, run_test
    from harness.sut.completion import Completer, Sample

    release, calls = threading.Event(), []
    monkeypatch.setattr(lg, "StartTestWithLogSettings", lambda *args: release.wait(10))
    for name in ("ConstructQSL", "ConstructSUT", "DestroySUT", "DestroyQSL"):
        monkeypatch.setattr(lg, name, lambda *args, name=name: calls.append(name) or 0)
    done: list = []
    completer = Completer(done.extend, lambda i, p, n: (i, n))
    completer.register([Sample(7, 3)])
    sut = SimpleNamespace(completer=completer, issue_queries=None, flush_queries=None, start=lambda: None,
                          stop=lambda: None, alive_threads=lambda: [], pipeline=None)
    qsl = SimpleNamespace(total_count=1, perf_count=1, load=None, unload=None)
    real_start = threading.Thread.start

    def start_then_interrupt(self):
        real_start(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "start", start_then_interrupt)
    try:
        with pytest.raises(Interrupted) as e:
            run_test(sut, qsl, None, tmp_path, tmp_path / "audit.config", on_interrupt=calls.append)
        assert e.value.finished is False          # LoadGen (here: the stand-in) was still running
        assert completer.closed and done == [(7, 0)]   # the outstanding sample completed, empty
        assert calls == ["ConstructQSL", "ConstructSUT", "interrupted (Ctrl-C)"]   # nothing destroyed yet
    finally:
        release.set()
    for _ in range(100):
        if len(calls) == 5:
            break
        time.sleep(0.02)
    assert calls[3:] == ["DestroySUT", "DestroyQSL"]     # by LoadGen's thread, once it returned


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


def _script(tmp_path, body: str) -> list[str]:
    """A python command running ``body`` in a fresh interpreter with the project importable."""
    entry = tmp_path / "entry.py"
    entry.write_text(f"import os, signal, sys, time\nsys.path.insert(0, {str(ROOT)!r})\n{body}")
    return [sys.executable, str(entry)]


STUCK = """
import run, harness.run.backend
from backends.null import NullBackend
class Stuck(NullBackend):
    def predict(self, images, image_hw):
        import torch
        open("in_flight", "w").close()
        a, end = torch.randn(200, 200), time.monotonic() + 40
        while time.monotonic() < end:      # a batch that computes inside torch for 40 s
            a = torch.tanh(a @ a)
        return super().predict(images, image_hw)
harness.run.backend.make_backend = lambda config, kind, **kw: Stuck(config.model)
sys.exit(run.main(sys.argv[1:]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig, code, scenario, then_kill", [(signal.SIGTERM, 143, "Server", False),
                                                            (signal.SIGINT, 130, "Offline", False),
                                                            (signal.SIGTERM, 143, "Offline", True)])
def test_signals_end_a_run_promptly_said_at_once_with_readable_logs(tmp_path, synthetic_coco, sig, code, scenario,
                                                                   then_kill):
    """The first batch computes inside torch for 40 s when the signal lands. The folder says INTERRUPTED within
    seconds (a supervisor's SIGKILL soon after leaves it so), and the process exits with 130/143 in seconds, not
    134 on the way out. Server: LoadGen paces its queries by the clock and is left running; Offline: it ends."""
    hint = ["--server-target-qps", "50"] if scenario == "Server" else ["--offline-expected-qps", "10"]
    cmd = _script(tmp_path, STUCK) + ["--scenario", scenario, "--mode", "performance", "--backend", "null", *hint,
                                      *_run_args(synthetic_coco, tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    run_dir = tmp_path / f"o/default/ssd-resnet34/{scenario}/performance/run_1"
    deadline = time.monotonic() + 60
    while not (tmp_path / "in_flight").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    t0 = time.monotonic()
    proc.send_signal(sig)
    while run_state(run_dir).label == "RUNNING" and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    if then_kill and proc.poll() is None:
        proc.kill()
    out, err = proc.communicate(timeout=60)
    how = "terminated (SIGTERM)" if sig == signal.SIGTERM else "interrupted (Ctrl-C)"
    state = run_state(run_dir)
    assert state.label == "INTERRUPTED" and how in state.reason, (state, err[-2000:])
    if then_kill:
        return
    assert proc.returncode == code and time.monotonic() - t0 < 15, err[-2000:]
    assert "terminate called" not in err
    assert f"INTERRUPTED: the run was {how}" in out and f"exit status {code}" in out
    assert (run_dir / "mlperf_log_detail.txt").read_text().startswith(":::MLLOG")
    log_text = (run_dir / "harness.log").read_text()
    assert how in log_text and "failed in interrupted" not in log_text     # one line, not one per sample
    assert "## performance" in (run_dir.parent.parent / "report.md").read_text()
    record = json.loads((run_dir / "run_record.json").read_text())
    assert record["interrupted"] == how and record["issued"] > 0


EMBEDDED = """
from backends.null import NullBackend
from harness.run.benchmark import run_benchmark
from harness.run.dataset import Dataset
from harness.settings.config import load_config
from qsl.memory_qsl import MemoryQSL

class Alarming(NullBackend):
    def predict(self, images, image_hw):
        if self.calls == 2:      # a few batches into the run, the alarm goes off on the main thread
            os.kill(os.getpid(), signal.SIGALRM)
        return super().predict(images, image_hw)

class Timeout(Exception):
    \"\"\"What pytest-timeout raises from its SIGALRM handler.\"\"\"

def on_alarm(signum, frame):
    raise SystemExit(3) if sys.argv[1] == "exit" else Timeout("the test took too long")

open("c.conf", "w").write("ssd-resnet34.*.performance_sample_count_override = 8\\n"
                          "ssd-resnet34.*.min_duration = 500\\nssd-resnet34.Offline.min_query_count = 400\\n")
config = load_config(None, {"run": {"scenario": "Offline", "mode": "performance", "user_conf": "c.conf",
                                    "batch_size": 4, "output_dir": "out", "offline_expected_qps": 100}})
signal.signal(signal.SIGALRM, on_alarm)
try:
    run_benchmark(config, Alarming(latency_ms=20), Dataset(MemoryQSL(8)))
except Timeout:
    print("caught the timeout", flush=True)
time.sleep(1)      # LoadGen's thread goes on meanwhile: it must find its SUT and QSL alive
print("second run:", run_benchmark(config, NullBackend(), Dataset(MemoryQSL(8))).exit_code, flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("how, code", [("raise", 0), ("exit", 3)])
def test_an_exception_on_the_main_thread_during_loadgen_leaves_the_process_whole(tmp_path, how, code):
    """A test's timeout or an embedding program's SystemExit lands while LoadGen runs: the SUT and QSL must
    outlive LoadGen (destroying them under it crashed with SIGSEGV), and the process goes on or exits cleanly."""
    proc = subprocess.run(_script(tmp_path, EMBEDDED) + [how], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == code, proc.stderr[-2000:]
    if how == "raise":
        assert "caught the timeout" in proc.stdout and "second run: 0" in proc.stdout
    status = json.loads((tmp_path / "out/default/ssd-resnet34/Offline/performance/run_1/run_status.json").read_text())
    assert status["status"] in ("failed", "finished")
