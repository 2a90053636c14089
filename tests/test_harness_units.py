"""Harness pieces without LoadGen: the response record, exactly-once completion, the pipeline.

Server batching and its latency budget: test_batching.py."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from backends.null import NullBackend
from harness.sut.batching import BatchQueue
from harness.sut.completion import Completer, Sample
from harness.sut.pipeline import Pipeline
from harness.sut.response import pack_records, to_record
from harness.sut.stream import StreamSUT
from qsl.memory_qsl import MemoryQSL


class Recorder:
    """Stands in for lg.QuerySamplesComplete: keeps (id, bytes) per completed sample."""

    def __init__(self):
        self.done: list[tuple[int, bytes]] = []
        self.lock = threading.Lock()

    def response(self, sample_id, ptr, nbytes):
        import ctypes
        return sample_id, ctypes.string_at(ptr, nbytes) if nbytes else b""

    def complete(self, responses):
        with self.lock:
            self.done.extend(responses)


def test_record_is_y_first_with_qsl_idx():
    det = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.9, 5.0]])  # x1, y1, x2, y2, score, label
    rec = to_record(det, 42)
    assert rec.dtype == np.float32 and rec.shape == (1, 7)
    np.testing.assert_array_equal(rec[0], np.float32([42, 0.2, 0.1, 0.4, 0.3, 0.9, 5.0]))
    assert to_record(torch.zeros(0, 6), 3).shape == (0, 7)
    with pytest.raises(ValueError, match=r"Tensor\[K, 6\]"):
        to_record(torch.zeros(2, 4), 0)


def test_pack_records_spans():
    a, b = np.ones((2, 7), np.float32), np.full((1, 7), 2, np.float32)
    buf, spans = pack_records([a, np.zeros((0, 7), np.float32), b])
    assert spans == [(0, 2 * 28), (2 * 28, 0), (2 * 28, 28)]
    assert buf.shape == (3, 7) and buf[2, 0] == 2


def test_completer_completes_each_sample_once():
    rec = Recorder()
    c = Completer(rec.complete, rec.response)
    samples = [Sample(100 + i, i) for i in range(4)]
    assert c.register(samples)
    c.complete(samples[:2], [np.ones((1, 7), np.float32), np.zeros((0, 7), np.float32)])
    c.complete(samples[:1], [np.ones((1, 7), np.float32)])          # already done: ignored
    c.fail(samples[1:3], "predict", RuntimeError("boom"))           # only sample 2 is still open
    assert c.close("worker", "stopped") == 1                        # sample 3
    ids = [i for i, _ in rec.done]
    assert sorted(ids) == [100, 101, 102, 103]
    assert dict(rec.done)[100] == np.ones(7, np.float32).tobytes()
    assert [(f.index, f.stage) for f in c.failures] == [(2, "predict"), (3, "worker")]
    assert not c.register([Sample(200, 9)])                         # closed: failed at once
    assert rec.done[-1] == (200, b"") and c.failures[-1].index == 9


def test_completer_fails_samples_whose_responses_cannot_be_built_or_sent(tmp_path):
    """What goes wrong after a sample leaves the register still completes it, empty, exactly once, and is
    recorded as text (as ``fail`` records it), so the failures can be written to run_record.json."""
    from harness.results.loadgen_log import LoadGenResult
    from harness.results.result_types import LoadGenRun
    from harness.results.run_record import read_run_record, write_run_record

    rec = Recorder()

    def response(sample_id, ptr, nbytes):
        if sample_id == 102 and nbytes:
            raise RuntimeError("no response for 102's buffer")
        return rec.response(sample_id, ptr, nbytes)

    c = Completer(rec.complete, response)
    samples = [Sample(100 + i, i) for i in range(4)]
    c.register(samples)
    good = np.ones((1, 7), np.float32)
    c.complete(samples[:3], [good, np.ones((2, 6), np.float32), good])   # 101: a malformed record
    assert sorted(i for i, _ in rec.done) == [100, 101, 102] and c.outstanding == 1
    assert dict(rec.done)[100] == good.tobytes() and dict(rec.done)[101] == b"" and dict(rec.done)[102] == b""
    assert sorted((f.index, f.stage) for f in c.failures) == [(1, "complete"), (2, "complete")]

    def refuses(responses):
        raise RuntimeError("LoadGen refused the call")

    c._complete_fn = refuses
    c.complete(samples[3:], [good])              # the completion call itself raises: nothing escapes ...
    assert c.outstanding == 0 and c.failures[-1].index == 3     # ... and the sample is failed, not lost
    assert c.closed_reason[1] == "LoadGen refused to complete samples: RuntimeError: LoadGen refused the call"
    errors = {f.index: f.error for f in c.failures}
    assert errors[2] == "RuntimeError: no response for 102's buffer"
    assert errors[3] == "RuntimeError: LoadGen refused the call" and isinstance(errors[1], str)

    write_run_record(LoadGenRun("performance", tmp_path, LoadGenResult(), c.failures, 4, 1.0))
    assert {f["index"]: f["error"] for f in read_run_record(tmp_path)["failures"]} == errors


def test_completer_times_each_completed_sample_from_issue():
    rec = Recorder()
    c = Completer(rec.complete, rec.response)
    samples = [Sample(1, 0), Sample(2, 1), Sample(3, 2)]
    c.register(samples[:2])
    time.sleep(0.05)
    c.register(samples[2:])
    c.complete(samples, [np.zeros((0, 7), np.float32)] * 3)
    c.register([Sample(4, 3)])
    c.fail([Sample(4, 3)], "predict", "boom")                        # failures are not timed
    assert len(c.latencies_s) == 3
    assert min(c.latencies_s[:2]) >= 0.05 > c.latencies_s[2] >= 0


class FailOn(NullBackend):
    """Raises for any batch holding the image of sample ``bad`` (MemoryQSL fills image i with i % 256)."""

    def __init__(self, bad: int):
        super().__init__()
        self.bad = bad

    def predict(self, images, image_hw):
        first = next(iter(images.values()))
        if (first[:, 0, 0, 0] == self.bad).any():
            raise RuntimeError(f"bad pixel in sample {self.bad}")
        return super().predict(images, image_hw)


def feed(pipe: Pipeline, source: BatchQueue, batches: list[list[Sample]]) -> None:
    """Give batches to a pipeline: through its source when threaded, else on this thread via run_inline."""
    if pipe.threaded:
        source.put(batches)
    else:
        for batch in batches:
            pipe.run_inline(batch)


@pytest.mark.parametrize("threaded", [True, False])
def test_pipeline_fails_only_the_bad_sample(threaded):
    rec = Recorder()
    qsl = MemoryQSL(20)
    qsl.load(range(20))
    c = Completer(rec.complete, rec.response)
    source = BatchQueue()
    pipe = Pipeline(FailOn(bad=5), qsl, c, source, threaded=threaded)
    pipe.start()
    samples = [Sample(1000 + i, i) for i in range(20)]
    c.register(samples)
    feed(pipe, source, [samples[i:i + 8] for i in range(0, 20, 8)])
    pipe.stop()
    assert sorted(i for i, _ in rec.done) == [s.id for s in samples]
    assert [f.index for f in c.failures] == [5]
    done = dict(rec.done)
    assert done[1005] == b"" and len(done[1004]) == 2 * 28   # null backend: 2 detections of 7 floats


class ThreadCounting(NullBackend):
    """Records torch's CPU thread count in the thread that runs predict."""

    threads = 1

    def predict(self, images, image_hw):
        self.seen = torch.get_num_threads()
        return super().predict(images, image_hw)


@pytest.mark.parametrize("threaded", [True, False])
def test_compute_thread_uses_the_backends_thread_count(threaded):
    backend, qsl, rec = ThreadCounting(), MemoryQSL(4), Recorder()
    main_threads = torch.get_num_threads()
    backend.threads = main_threads + 1                  # differs from the default, whatever the machine
    qsl.load(range(4))
    c = Completer(rec.complete, rec.response)
    source = BatchQueue()
    pipe = Pipeline(backend, qsl, c, source, threaded=threaded)
    samples = [Sample(i, i) for i in range(4)]
    c.register(samples)

    def issue():   # like LoadGen: the inline pipeline runs on the thread that issues
        pipe.start()
        feed(pipe, source, [samples])
        pipe.stop()

    caller = threading.Thread(target=issue)
    caller.start()
    caller.join(30)
    assert len(rec.done) == 4 and backend.seen == main_threads + 1
    assert torch.get_num_threads() == main_threads      # only the computing thread was changed


def test_dead_worker_completes_outstanding_and_later_samples():
    class Explodes(NullBackend):
        def predict(self, images, image_hw):
            raise SystemExit("thread killed")  # not an Exception: escapes the per-batch handler

    rec = Recorder()
    qsl = MemoryQSL(8)
    qsl.load(range(8))
    c = Completer(rec.complete, rec.response)
    source = BatchQueue()
    pipe = Pipeline(Explodes(), qsl, c, source, threaded=True)
    pipe.start()
    samples = [Sample(i, i) for i in range(8)]
    c.register(samples)
    source.put([samples[:4], samples[4:]])
    deadline = time.monotonic() + 5
    while len(rec.done) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(i for i, _ in rec.done) == list(range(8))
    assert c.closed and all(f.stage == "worker" for f in c.failures)
    c.register([Sample(50, 0)])
    assert rec.done[-1] == (50, b"")
    pipe.stop()


class Query:
    """Stands in for LoadGen's QuerySample (``id``, ``index``)."""

    def __init__(self, id: int, index: int):
        self.id, self.index = id, index


class LosesDevice(NullBackend):
    """Raises a BaseException (not caught per sample) on its second call."""

    def predict(self, images, image_hw):
        if self.calls == 1:
            self.calls += 1
            raise SystemExit("the device was lost")
        return super().predict(images, image_hw)


def test_stream_sut_answers_each_query_before_issue_returns_and_survives_a_lost_device():
    rec, qsl = Recorder(), MemoryQSL(8)
    qsl.load(range(8))
    sut = StreamSUT(LosesDevice(), qsl, "SingleStream", Completer(rec.complete, rec.response))
    sut.start()
    sut.issue_queries([Query(100, 0)])
    assert [i for i, _ in rec.done] == [100] and len(rec.done[0][1]) == 2 * 28      # done on return
    sut.issue_queries([Query(101, 1)])           # the backend dies: completed empty, nothing escapes
    sut.issue_queries([Query(102, 2), Query(103, 3)])    # later queries complete at once, empty
    sut.stop()
    assert rec.done[1:] == [(101, b""), (102, b""), (103, b"")]
    assert sut.completer.closed_reason[1] == ("the work on LoadGen's issue thread failed: "
                                              "SystemExit: the device was lost")


def test_closing_logs_one_line_for_all_outstanding_and_later_samples(caplog):
    rec = Recorder()
    c = Completer(rec.complete, rec.response)
    c.register([Sample(i, i) for i in range(30)])
    with caplog.at_level("ERROR", logger="harness"):
        assert c.close("interrupted", "the run was terminated (SIGTERM)") == 30
        assert not c.register([Sample(99, 9)])                    # issued after the close: completed at once
    assert len(rec.done) == 31 and len(c.failures) == 31
    assert [r.getMessage() for r in caplog.records] == [
        "the run was terminated (SIGTERM): 30 outstanding sample(s) completed with empty responses; "
        "so is every sample issued from now on"]
