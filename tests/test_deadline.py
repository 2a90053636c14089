"""A local worker whose ``predict`` never returns: past the deadline it is retired as lost and its samples go
to the other workers (or fail when none is left); stopping the SUT never waits for it without bound.

The workers sleep instead of computing (tests/sleep_workers.py); a stuck one waits on an event the test
releases at the end, so no thread outlives the test.
"""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from harness.settings.config import Config, RunConfig
from harness.sut.factory import call_deadline_s, make_sut
from qsl.memory_qsl import MemoryQSL
from tests.sleep_workers import SleepWorker, Workers, exactly_once, make_pipeline, wait_for


class Stuck(SleepWorker):
    """Its ``predict`` never returns (until ``release`` is set); ``entered`` is set once a call is in it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def predict(self, images, image_hw):
        self.entered.set()
        self.release.wait(60)
        return super().predict(images, image_hw)


@pytest.fixture
def stuck():
    worker = Stuck()
    yield worker
    worker.release.set()


def test_a_worker_past_its_deadline_is_retired_and_its_samples_are_computed_by_the_others(stuck):
    healthy = SleepWorker(ms=1)
    pipe, source, c, rec, samples = make_pipeline(Workers([stuck, healthy]), 64, deadline_s=0.3)
    pipe.start()
    source.put([samples[i:i + 4] for i in range(0, len(samples), 4)])
    assert wait_for(lambda: len(rec.done) == len(samples)), f"{len(rec.done)} of {len(samples)} completed"
    t0 = time.monotonic()
    pipe.stop()
    assert time.monotonic() - t0 < 3.0                           # the stuck thread is not waited for
    done = exactly_once(rec, samples)
    assert c.failures == [] and all(done.values()) and healthy.samples == len(samples)
    assert pipe.pool.workers[0].retired and not pipe.pool.workers[1].retired
    assert "0.3 s deadline" in pipe.pool.lost[0] and pipe.pool.recomputed >= 1


def test_when_the_only_worker_misses_its_deadline_its_samples_fail_and_the_run_can_end(stuck):
    pipe, source, c, rec, samples = make_pipeline(stuck, 16, deadline_s=0.2)
    pipe.start()
    source.put([samples[i:i + 4] for i in range(0, len(samples), 4)])
    assert wait_for(lambda: len(rec.done) == len(samples))
    pipe.stop()
    exactly_once(rec, samples)
    assert len(c.failures) == len(samples) and "no worker is left" in c.closed_reason[1]
    assert "deadline" in c.closed_reason[1]


def test_stopping_does_not_wait_for_a_stuck_predict(stuck):
    """Ctrl-C or SIGTERM closes the completer, LoadGen returns, and the SUT is stopped: with a predict that
    never returns (and the default 600 s deadline far away) that must still take about a second."""
    pipe, source, c, rec, samples = make_pipeline(Workers([stuck, Stuck()]), 32, deadline_s=600.0)
    pipe.start()
    source.put([samples[i:i + 4] for i in range(0, len(samples), 4)])
    assert stuck.entered.wait(10)
    c.close("interrupted", "the run was terminated (SIGTERM)")  # what the LoadGen watcher does on a signal
    t0 = time.monotonic()
    pipe.stop()
    assert time.monotonic() - t0 < 5.0
    exactly_once(rec, samples)
    assert all(t.daemon for t in pipe._threads)                  # left behind, they cannot hold the process
    pipe.workers[1].release.set()


@pytest.mark.parametrize("scenario, bound_s, timeout, expected", [
    ("Server", 0.1, None, 5.0),          # 10 x 100 ms is below the floor
    ("Server", 2.0, None, 20.0),
    ("Offline", 0.1, None, 600.0),
    ("Offline", 0.1, 2.5, 2.5),          # --call-timeout, also for local workers
])
def test_the_deadline_follows_the_scenario_and_can_be_set(scenario, bound_s, timeout, expected):
    run = RunConfig(scenario=scenario, ray_call_timeout_s=timeout)
    assert call_deadline_s(run, bound_s) == expected
    settings = SimpleNamespace(server_target_latency_ns=int(bound_s * 1e9))
    sut = make_sut(scenario, SleepWorker(), MemoryQSL(4), Config(run=run), settings)
    assert sut.pipeline.deadline_s == expected


def test_a_stream_query_past_its_deadline_ends_the_run_as_a_dead_worker(stuck):
    """A SingleStream query computes on LoadGen's own thread, which a stuck predict holds: its sample and
    every later one complete at once, and the completer's reason is what the LoadGen watcher reports."""
    from harness.sut.completion import Completer
    from harness.sut.stream import StreamSUT
    from tests.test_harness_units import Query, Recorder

    rec, qsl = Recorder(), MemoryQSL(4)
    qsl.load(range(4))
    sut = StreamSUT(Workers([stuck, SleepWorker()]), qsl, "SingleStream", Completer(rec.complete, rec.response),
                    deadline_s=0.3)
    sut.start()
    issue = threading.Thread(target=sut.issue_queries, args=([Query(7, 1)],), daemon=True)   # LoadGen's thread
    issue.start()
    assert wait_for(lambda: len(rec.done) == 1, timeout=10) and rec.done == [(7, b"")]
    stage, why = sut.completer.closed_reason
    assert stage == "worker" and "0.3 s deadline" in why and not sut.pipeline.inline_busy
    sut.stop()
