"""Faults of Ray workers in the middle of LoadGen runs: every sample completed once, the fault reported, no hang.

A worker whose process dies is restarted by Ray and re-admitted; one that cannot come back (restarts
off, its node gone) is lost, and its batches go to the others.

Workers are null backends that hold each batch a few milliseconds; the one meant to fail does so from
inside (its process killed, its device stuck) or loses its node, after it computed some batches.
Test-made factories and backends travel to the workers by value (cloudpickle).
"""
from __future__ import annotations

import functools
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from backends.null import NullBackend
from harness.results.loadgen_log import read_detail_log
from harness.run.benchmark import run_benchmark
from harness.run.dataset import Dataset
from harness.settings.config import load_config
from qsl.memory_qsl import MemoryQSL
from tests.test_harness_scenarios import HINTS


class Faulty(NullBackend):
    """Holds each batch ``ms``; after ``after`` batches the worker that claimed ``token`` (a file, so one
    worker only, unless ``every``) fails as ``how`` says: "die" (its process is killed), "hang" (it
    never returns), "mark" (it only writes ``token`` + ".ready", for a test that then removes its node)."""

    def __init__(self, ms: float, how: str, after: int, token: str, every: bool) -> None:
        super().__init__(latency_ms=ms)
        self.how, self.after, self.token, self.every = how, after, token, every
        self.doomed: bool | None = None

    def _claim(self) -> bool:
        if self.every:
            return True
        try:
            os.close(os.open(self.token, os.O_CREAT | os.O_EXCL))
            return True
        except FileExistsError:
            return False

    def predict(self, images, image_hw):
        if self.calls == self.after and self.doomed is None:
            self.doomed = self._claim()
            if self.doomed and self.how == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.doomed and self.how == "hang":
                time.sleep(3600)
            if self.doomed and self.how == "mark":
                Path(self.token + ".ready").touch()
        return super().predict(images, image_hw)


def faulty(ms, how, after, token, every, node_id, device, threads, weights):
    """The factory: a Faulty worker; with ``node_id``, only the worker on that node is the one to mark."""
    import ray
    if node_id is not None and ray.get_runtime_context().get_node_id() != node_id:
        return NullBackend(latency_ms=ms)
    return Faulty(ms, how, after, token, every)


def _backend(cluster, tmp_path, how, workers=2, after=3, every=False, node_id=None, ms=10.0, **kw):
    from ray import cloudpickle

    from backends.ray.backend import RayBackend
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    factory = functools.partial(faulty, ms, how, after, str(tmp_path / "token"), every, node_id)
    return RayBackend.start(factory, address=cluster.address, device="cpu", workers=workers, **kw)


def _config(tmp_path, conf, scenario, offline_qps):
    # LoadGen sizes the Offline query 1.1 x 0.5 s x offline_qps samples (at least 256).
    return load_config(None, {"run": {"scenario": scenario, "mode": "performance", "user_conf": str(conf),
                                      "output_dir": str(tmp_path / "out"),
                                      **{**HINTS, "offline_expected_qps": offline_qps}}})


def _run(tmp_path, conf, scenario, backend, offline_qps=500.0):
    try:
        result = run_benchmark(_config(tmp_path, conf, scenario, offline_qps), backend, Dataset(MemoryQSL(128)))
    finally:
        backend.close()
    (run,) = result.runs
    log = (run.out_dir / "harness.log").read_text()
    return result, run, log


@pytest.mark.parametrize("scenario", ["Offline", "Server"])
def test_a_worker_killed_mid_run_hands_its_batch_on_and_restarts(ray_cluster, tmp_path, fast_conf, scenario):
    """Whether it is back before the run ends depends on this machine's speed: test_ray_executor.py checks
    that a restarted worker is re-admitted."""
    backend = _backend(ray_cluster, tmp_path, "die")
    result, run, log = _run(tmp_path, fast_conf, scenario, backend)
    # Every issued sample completed once with its detections (the completer counts a second completion as
    # an error, and a lost one keeps LoadGen waiting); LoadGen's own count agrees.
    assert run.failures == [] and result.exit_code == 0 and run.worker_error is None
    assert read_detail_log(run.out_dir / "mlperf_log_detail.txt").samples_per_s > 0
    assert run.loadgen.validity in ("VALID", "INVALID")   # a result either way: Server may miss its bound
    assert "(WorkerRestarting: worker " in log and "went away with this batch; Ray restarts it if it can); " \
        "a worker on another device takes it" in log
    assert " lost (" not in log and sum(s.restarts for s in backend.states) <= 1   # restarted, not lost


def test_a_stuck_worker_misses_its_server_deadline_and_the_run_goes_on(ray_cluster, tmp_path, fast_conf):
    t0 = time.monotonic()
    backend = _backend(ray_cluster, tmp_path, "hang", deadline_s=1.0)
    result, run, log = _run(tmp_path, fast_conf, "Server", backend)
    assert run.failures == [] and result.exit_code == 0
    assert "took more than its 1 s deadline for a batch of" in log and "it was stopped" in log
    assert time.monotonic() - t0 < 120                     # no hang: the stuck batch was given up on after 1 s


def test_a_cluster_that_lost_every_worker_ends_with_status_1_and_readable_logs(ray_cluster, tmp_path, fast_conf):
    backend = _backend(ray_cluster, tmp_path, "die", every=True, max_restarts=0)
    result, run, log = _run(tmp_path, fast_conf, "Offline", backend)
    assert result.exit_code == 1 and "no worker is left" in run.worker_error
    # Each worker dies at its 4th call: after the start-up image and at most 2 batches of 8 (a batch that
    # finished just before the kill can lose its reply with the process; it goes to the other worker).
    computed = run.issued - len(run.failures)
    assert 0 < computed <= 2 * 2 * 8
    assert read_detail_log(run.out_dir / "mlperf_log_detail.txt") is not None
    assert (run.out_dir / "mlperf_log_summary.txt").stat().st_size > 0 and (run.out_dir / "run_record.json").is_file()


def test_a_node_lost_mid_run_loses_its_worker_only(ray_cluster, tmp_path, fast_conf):
    """Three nodes, a worker on each; the third node goes away after its worker computed a batch."""
    import ray
    node = ray_cluster.add_node(num_cpus=1)
    ray_cluster.wait_for_nodes()
    node_id = node.node_id
    try:
        backend = _backend(ray_cluster, tmp_path, "mark", workers=3, after=1, every=True, node_id=node_id,
                           ms=20.0, max_restarts=0)
        assert len({s.node_id for s in backend.states}) == 3

        def remove_when_ready():
            ready = tmp_path / "token.ready"
            deadline = time.monotonic() + 60
            while not ready.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            ray_cluster.remove_node(node, allow_graceful=False)   # as a crash: its processes killed

        remover = threading.Thread(target=remove_when_ready, daemon=True)
        remover.start()
        result, run, log = _run(tmp_path, fast_conf, "Offline", backend, offline_qps=2400.0)  # > 1 s of batches
        remover.join(60)
        assert run.failures == [] and result.exit_code == 0 and run.loadgen.validity == "VALID"
        # Until Ray marks the node dead (about 10 s here) its actor reads as unavailable: its batches go to
        # the others and it takes no more; once Ray knows, it is lost. Either way, only that worker.
        hit = set(re.findall(r"on worker (\d) \([^)]*\) failed \(WorkerRestarting: ", log)) | set(re.findall(r"worker (\d) of 3 lost", log))
        assert len(hit) == 1 and len(re.findall(r"of 3 lost \(", log)) <= 1
    finally:
        if node in ray_cluster.worker_nodes:
            ray_cluster.remove_node(node, allow_graceful=False)
        deadline = time.monotonic() + 30   # Ray notices a crashed node within about 10 s here; later tests
        while time.monotonic() < deadline and any(n["Alive"] and n["NodeID"] == node_id for n in ray.nodes()):
            time.sleep(0.2)                # must not be given a worker on it
