"""The pipeline with several workers: fair shares, lost workers, failed devices, Server batches under the bound.

The workers here sleep instead of computing (the GIL is free while they do), so
the tests exercise the harness's threads and queues as a GPU machine would, on
any CPU. Assertions are about counts and exactly-once completion; the one
latency check (Server) has several times the slack a correct pipeline needs.
"""
from __future__ import annotations

import threading
import time

import pytest

from backends.base import WorkerLost
from backends.null import NullBackend
from harness.sut.batching import BatchQueue
from harness.sut.completion import Completer, Sample
from harness.sut.pipeline import Pipeline
from harness.sut.stream import StreamSUT
from qsl.memory_qsl import MemoryQSL
from tests.test_harness_units import Query, Recorder


class SleepWorker(NullBackend):
    """One worker: holds each batch ``ms`` milliseconds (sleeping), counts what it computed.

    ``lost_after``: after that many batches every call raises WorkerLost (``where`` = "predict" or "stage").
    ``broken``: every predict raises a plain RuntimeError (a failed device that does not say it is lost).
    """

    def __init__(self, ms: float = 0.0, lost_after: int | None = None, where: str = "predict",
                 broken: bool = False) -> None:
        super().__init__(latency_ms=ms)
        self.lost_after, self.where, self.broken = lost_after, where, broken
        self.batches = self.samples = 0
        self.staged = self.predicted = 0     # calls, counted where the loss is to happen
        self.after_loss = 0                  # calls made to this worker after it said it was lost
        self.lock = threading.Lock()

    def _check_lost(self, calls: int) -> None:
        if self.lost_after is not None and calls >= self.lost_after:
            self.after_loss += 1
            raise WorkerLost("the device fell off the bus")

    def stage(self, images, image_hw):
        if self.where == "stage":
            self._check_lost(self.staged)
            self.staged += 1
        return images, image_hw

    def predict(self, images, image_hw):
        if self.where == "predict":
            self._check_lost(self.predicted)
            self.predicted += 1
        if self.broken:
            raise RuntimeError("device error: illegal memory access")
        out = super().predict(images, image_hw)
        with self.lock:
            self.batches += 1
            self.samples += int(image_hw.shape[0])
        return out


class Workers(SleepWorker):
    """A backend with several workers (as one per GPU): itself first, then the others."""

    def __init__(self, workers: list[SleepWorker]) -> None:
        super().__init__()
        self.all = workers

    def workers(self):
        return self.all

    def predict(self, images, image_hw):   # the pipeline calls the workers, never this
        return self.all[0].predict(images, image_hw)


def _wait_for(cond, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.005)
    return cond()


def _pipeline(backend, n_samples: int = 64):
    rec, qsl = Recorder(), MemoryQSL(n_samples)
    qsl.load(range(n_samples))
    c = Completer(rec.complete, rec.response)
    source = BatchQueue()
    pipe = Pipeline(backend, qsl, c, source, threaded=True)
    samples = [Sample(1000 + i, i) for i in range(n_samples)]
    c.register(samples)
    return pipe, source, c, rec, samples


def _exactly_once(rec: Recorder, samples: list[Sample]) -> dict[int, bytes]:
    ids = [i for i, _ in rec.done]
    assert sorted(ids) == sorted(s.id for s in samples), "a sample was lost or completed twice"
    return dict(rec.done)


# -- Offline: every worker is fed while the query's batches are queued --------------------------------------

@pytest.mark.parametrize("n", [2, 4])
def test_offline_feeds_every_worker_while_the_queue_is_open(n):
    workers = [SleepWorker(ms=10) for _ in range(n)]
    pipe, source, c, rec, samples = _pipeline(Workers(workers), 16 * n * 2)
    pipe.start()
    source.put([samples[i:i + 2] for i in range(0, len(samples), 2)])   # one Offline query; NOT closed
    assert _wait_for(lambda: len(rec.done) == len(samples)), f"{len(rec.done)} of {len(samples)} completed"
    shares = [w.samples for w in workers]
    pipe.stop()
    fair = len(samples) / n
    assert all(s >= fair / 2 for s in shares), f"shares {shares}, fair share {fair:.0f}"


# -- a lost worker's batches go to the others; a sample fails only when no worker is left --------------------

@pytest.mark.parametrize("where", ["predict", "stage"])
def test_a_lost_worker_hands_its_batches_to_the_others(where):
    workers = [SleepWorker(ms=2), SleepWorker(ms=2, lost_after=1, where=where), SleepWorker(ms=2)]
    pipe, source, c, rec, samples = _pipeline(Workers(workers), 96)
    pipe.start()
    source.put([samples[i:i + 4] for i in range(0, len(samples), 4)])
    assert _wait_for(lambda: len(rec.done) == len(samples))
    assert not c.closed
    pipe.stop()
    done = _exactly_once(rec, samples)
    assert c.failures == []
    assert all(len(done[s.id]) == 2 * 28 for s in samples)          # every sample has its detections
    # Retired at its first WorkerLost: no call after it. Lost in stage, it may or may not have computed the
    # batch it staged before; that batch is on the lost device, so it is handed back if not.
    assert workers[1].after_loss == 1 and workers[1].batches == (1 if where == "predict" else workers[1].batches)
    assert workers[1].batches <= 1
    assert sum(w.samples for w in workers) == len(samples)


def test_when_every_worker_is_lost_every_sample_still_completes_once_and_later_ones_at_once():
    workers = [SleepWorker(ms=2, lost_after=2), SleepWorker(ms=2, lost_after=1)]
    pipe, source, c, rec, samples = _pipeline(Workers(workers), 64)
    pipe.start()
    source.put([samples[i:i + 4] for i in range(0, len(samples), 4)])
    assert _wait_for(lambda: len(rec.done) == len(samples))
    done = _exactly_once(rec, samples)
    computed = sum(w.samples for w in workers)
    assert computed == 12 and sum(1 for b in done.values() if b) == computed
    assert len(c.failures) == len(samples) - computed and c.closed
    assert "no worker is left" in c.closed_reason[1] and "the device fell off the bus" in c.closed_reason[1]
    assert not c.register([Sample(5000, 1)]) and rec.done[-1] == (5000, b"")   # later samples: at once
    pipe.stop()


def test_a_stream_query_goes_to_the_next_worker_when_its_worker_is_lost():
    workers = [SleepWorker(lost_after=1), SleepWorker()]
    rec, qsl = Recorder(), MemoryQSL(8)
    qsl.load(range(8))
    sut = StreamSUT(Workers(workers), qsl, "SingleStream", Completer(rec.complete, rec.response))
    sut.start()
    for i in range(4):
        sut.issue_queries([Query(100 + i, i)])
        assert len(rec.done) == i + 1                                # answered before issue returns
    sut.stop()
    assert all(len(b) == 2 * 28 for _, b in rec.done) and sut.completer.failures == []
    assert (workers[0].batches, workers[1].batches) == (1, 3)



@pytest.mark.parametrize("lost", [1, 2])
def test_an_offline_run_survives_a_lost_worker_and_ends_with_status_1_when_all_are(tmp_path, fast_conf, lost):
    from harness.run.benchmark import run_benchmark
    from harness.run.dataset import Dataset
    from tests.test_harness_scenarios import _config

    workers = [SleepWorker(ms=1, lost_after=3 if i < lost else None) for i in range(2)]
    result = run_benchmark(_config(tmp_path, fast_conf, "Offline"), Workers(workers), Dataset(MemoryQSL(100)))
    (run,) = result.runs
    computed = sum(w.samples for w in workers)
    assert run.issued == computed + len(run.failures)       # each sample once: a result or a failure
    if lost == 1:
        assert run.loadgen.validity == "VALID" and run.failures == [] and result.exit_code == 0
    else:
        assert computed == 2 * 3 * 8 and result.exit_code == 1 and "no worker is left" in run.worker_error
