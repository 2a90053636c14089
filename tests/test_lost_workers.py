"""A lost worker (WorkerLost from predict or stage) is retired and its batches go to the others; a sample
fails only when no worker is left, and then every later sample completes at once.

The workers sleep instead of computing (tests/sleep_workers.py).
"""
from __future__ import annotations

import pytest

from harness.sut.completion import Completer, Sample
from harness.sut.stream import StreamSUT
from qsl.memory_qsl import MemoryQSL
from tests.sleep_workers import SleepWorker, Workers, exactly_once, make_pipeline, wait_for
from tests.test_harness_units import Query, Recorder


# -- a lost worker's batches go to the others; a sample fails only when no worker is left --------------------

@pytest.mark.parametrize("where", ["predict", "stage"])
def test_a_lost_worker_hands_its_batches_to_the_others(where):
    workers = [SleepWorker(ms=2), SleepWorker(ms=2, lost_after=1, where=where), SleepWorker(ms=2)]
    pipe, source, c, rec, samples = make_pipeline(Workers(workers), 96)
    pipe.start()
    source.put([samples[i:i + 4] for i in range(0, len(samples), 4)])
    assert wait_for(lambda: len(rec.done) == len(samples))
    assert not c.closed
    pipe.stop()
    done = exactly_once(rec, samples)
    assert c.failures == []
    assert all(len(done[s.id]) == 2 * 28 for s in samples)          # every sample has its detections
    # Retired at its first WorkerLost: no call after it. Lost in stage, it may or may not have computed the
    # batch it staged before; that batch is on the lost device, so it is handed back if not.
    assert workers[1].after_loss == 1 and workers[1].batches == (1 if where == "predict" else workers[1].batches)
    assert workers[1].batches <= 1
    assert sum(w.samples for w in workers) == len(samples)


def test_when_every_worker_is_lost_every_sample_still_completes_once_and_later_ones_at_once():
    workers = [SleepWorker(ms=2, lost_after=2), SleepWorker(ms=2, lost_after=1)]
    pipe, source, c, rec, samples = make_pipeline(Workers(workers), 64)
    pipe.start()
    source.put([samples[i:i + 4] for i in range(0, len(samples), 4)])
    assert wait_for(lambda: len(rec.done) == len(samples))
    done = exactly_once(rec, samples)
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
