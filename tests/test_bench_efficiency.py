"""bench_efficiency compares like with like: the bare loop runs the same workers the LoadGen run does."""
from __future__ import annotations

import threading

from benchmarks import common
from benchmarks.bench_efficiency import bare_offline
from harness.settings.config import load_config
from qsl.memory_qsl import MemoryQSL
from tests.test_perf_paths import StagingWorker, TwoWorkers


def _batches(n, batch):
    qsl = MemoryQSL(n)
    qsl.load(range(n))
    return [qsl.get_batch(list(range(i, min(i + batch, n)))) for i in range(0, n, batch)]


class ThreadNoting(TwoWorkers):
    """Two workers whose first predict waits for the other's: they must run at the same time."""

    def __init__(self):
        super().__init__()
        self.threads_seen = {"w0": set(), "w1": set()}
        both = threading.Barrier(2, timeout=30)
        for w in (self, self.other):
            inner = w.predict

            def predict(images, hw, _w=w, _inner=inner):
                if not self.threads_seen[_w.name]:
                    both.wait()                   # raises if the other worker never runs concurrently
                self.threads_seen[_w.name].add(threading.get_ident())
                return _inner(images, hw)
            w.predict = predict


def test_bare_loop_runs_every_worker_in_its_own_thread_on_staged_batches():
    backend = ThreadNoting()
    rate = bare_offline(backend, _batches(16, 4), samples=37)      # 9 full batches of 4 and a remainder of 1
    assert rate > 0
    assert backend.samples + backend.other.samples == 37           # StagingWorker.predict checks the staging
    assert backend.samples > 0 and backend.other.samples > 0
    assert not backend.threads_seen["w0"] & backend.threads_seen["w1"]    # one thread per worker


def test_bare_loop_with_one_worker_does_the_same_work():
    worker = StagingWorker("w0")
    bare_offline(worker, _batches(8, 4), samples=10)
    assert worker.samples == 10


class GraphedBackend:
    """Has CUDA-graph runners; records what it is asked to warm up."""

    def __init__(self):
        self.warmed = []

    def graph_runners(self):
        return [object()]

    def warmup(self, batch_sizes):
        self.warmed.append(batch_sizes)


def test_the_remainder_of_each_offline_query_is_captured_before_the_run(tmp_path):
    conf = common.write_conf(tmp_path / "bench.conf", 2.0)
    cfg = load_config(None, {"run": {"batch_size": 32, "user_conf": str(conf)}})
    backend = GraphedBackend()
    common.warm_offline_query(cfg, backend, 100.0)     # LoadGen: floor(1.1 x 2 s x 100/s) = 220 = 6 x 32 + 28
    assert backend.warmed == [(32, 28, 1)]
    cpu = GraphedBackend()
    cpu.graph_runners = lambda: []
    common.warm_offline_query(cfg, cpu, 100.0)
    assert cpu.warmed == []                             # no graphs: nothing to capture
