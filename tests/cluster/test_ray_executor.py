"""--executor ray on a two-node Ray cluster on this machine (the session's ``ray_cluster``).

Workers are null backends unless a test needs the model; test-made factories travel to the workers
by value (cloudpickle), since the workers import only the project's packages.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

import run as run_py
from backends.base import WorkerLost
from backends.ray.proxy import WorkerRestarting
from backends.model_config import ModelConfig
from backends.null import NullBackend
from backends.factory import build_worker
from harness.run.backend import backend_spec, call_deadline_s, make_backend, make_ray_backend
from harness.run.benchmark import run_benchmark
from harness.settings.config import Config, RunConfig, load_config

ROOT = Path(__file__).resolve().parents[2]


def _ship_this_module_by_value():
    from ray import cloudpickle
    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def slow_null(device: str, threads: int, weights) -> NullBackend:
    """A worker whose every batch takes 3 s."""
    return NullBackend(latency_ms=3000)


def broken(device: str, threads: int, weights):
    raise ValueError("this node cannot build it")


def _batch(b: int = 4, size: int = 300):
    return {size: torch.zeros(b, 3, size, size, dtype=torch.uint8)}, torch.tensor([[480, 640]] * b)


def _ray_config(cluster, **run) -> Config:
    return Config(run=RunConfig(executor="ray", ray_address=cluster.address, **run))


def _start(factory, cluster, **kw):
    from backends.ray.backend import RayBackend
    _ship_this_module_by_value()
    return RayBackend.start(factory, address=cluster.address, **kw)


def test_workers_on_two_nodes_compute_like_a_local_backend_and_a_killed_one_comes_back(ray_cluster):
    import ray
    backend = make_ray_backend(_ray_config(ray_cluster, ray_workers=2), "null")
    try:
        assert len({s.node_id for s in backend.states}) == 2       # SPREAD: one bundle on each node
        assert backend.name == "null on Ray, 2 workers on 2 nodes" and backend.simulated and backend.sizes == (300,)
        expected = NullBackend().predict(*_batch())
        for proxy in backend.workers():
            staged = proxy.stage(*_batch())
            assert staged[0].pending is not None                  # sent as soon as it is staged
            assert [torch.equal(a, b) for a, b in zip(proxy.predict(*staged), expected)] == [True] * 4
            images, hw = staged                                   # a slice of a staged batch is sent afresh
            one = proxy.predict(type(images)({300: images[300][1:2]}), hw[1:2])
            assert len(one) == 1 and torch.equal(one[0], expected[0])
        assert len(backend.predict(*_batch(3))) == 3

        first, second = backend.workers()
        killed = backend.states[0].pid
        os.kill(killed, signal.SIGKILL)
        with pytest.raises(WorkerRestarting, match=r"^worker 0 on node \S+ .*went away with this batch; Ray restarts it if it can$"):
            first.predict(*_batch())
        assert len(second.predict(*_batch(2))) == 2               # the other worker computes meanwhile
        deadline = time.monotonic() + 120                          # re-admitted between batches once it is back
        while not first.wait_ready(0.5):
            assert time.monotonic() < deadline
        assert backend.states[0].pid != killed and backend.states[0].restarts == 1
        assert len(first.predict(*_batch(2))) == 2

        for state in backend.states:                               # gone for good: lost, and stays lost
            ray.kill(state.actor, no_restart=True)
        with pytest.raises(WorkerLost, match=r"^worker 0 on node \S+ .*is lost: "):
            first.predict(*_batch())
        with pytest.raises(WorkerLost):
            first.predict(*first.stage(*_batch()))
        with pytest.raises(WorkerLost, match="every Ray worker is lost: worker 0 .*; worker 1 "):
            backend.predict(*_batch())
        assert len(backend.lost()) == 2
    finally:
        backend.close()


def test_a_worker_past_its_deadline_is_lost_and_stopped(ray_cluster):
    import ray
    backend = _start(slow_null, ray_cluster, device="cpu", workers=1, deadline_s=0.5)
    try:
        (proxy,) = backend.workers()
        t0 = time.monotonic()
        with pytest.raises(WorkerLost, match=r"worker 0 on node .* took more than its 0.5 s deadline for a batch of "
                                             r"4; it was stopped"):
            proxy.predict(*_batch())
        assert time.monotonic() - t0 < 2.5                         # well before the 3 s batch would end
        deadline = time.monotonic() + 30                           # killed (ray.kill takes effect shortly after):
        with pytest.raises(ray.exceptions.RayActorError):          # no stale work comes back later
            while time.monotonic() < deadline:
                ray.get(backend.states[0].control("ping"), timeout=30)
                time.sleep(0.1)
    finally:
        backend.close()


def test_a_worker_that_cannot_build_says_which_node_and_why(ray_cluster):
    from backends.ray.cluster import RayClusterError
    with pytest.raises(RayClusterError, match=r"worker 0 on node \S+.* could not build its backend: ValueError: "
                                              r"this node cannot build it"):
        _start(broken, ray_cluster, device="cpu", workers=1)


def test_a_cluster_without_gpus_or_with_another_torch_is_refused(ray_cluster, synthetic_coco, fast_conf, monkeypatch,
                                                                 capsys):
    argv = ["--backend", "null", "--data", str(synthetic_coco), "--user-conf", str(fast_conf), "--executor", "ray",
            "--ray-address", ray_cluster.address, "--ray-workers", "1"]
    assert run_py.main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --device cuda: the Ray cluster at {ray_cluster.address} "
                                               "has no GPU (node ")
    import backends.ray.backend as ray_backend
    real = ray_backend.software_versions
    monkeypatch.setattr(ray_backend, "software_versions", lambda: {**real(), "torch": "2.0.0"})
    assert run_py.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: worker 0 on node ") and f"runs torch {torch.__version__} (this process: " \
        "2.0.0); install the same versions" in err[-1]


def test_a_ray_version_mismatch_at_connect_is_one_clear_error(monkeypatch):
    import ray

    from backends.ray.cluster import RayClusterError, connect

    def init(**kw):   # what Ray 2.60's check_version_info raises
        raise RuntimeError("Version mismatch: The cluster was started with:\n    Ray: 2.59.0\n    Python: 3.11.9\n"
                           "This process on node 10.0.0.1 was started with:\n    Ray: 2.60.0\n    Python: 3.11.9\n")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr("backends.ray.cluster.check_reachable", lambda address: None)
    with pytest.raises(RayClusterError, match=r"the Ray cluster at 10.0.0.1:6379 runs other versions than this "
                                              r"process \(Version mismatch: The cluster was started with: Ray: 2.59.0 "
                                              r".*Ray: 2.60.0 Python: 3.11.9\); install the same Ray and Python"):
        connect("10.0.0.1:6379")


def test_a_worker_builds_from_the_shipped_weights_without_the_checkpoint_file(tmp_path):
    from backends.pytorch.backend import read_weights
    config = load_config(ROOT / "configs" / "demo.toml", {"run": {"device": "cpu"}})
    weights = read_weights(config.model)
    gone = dataclasses.replace(config.model, checkpoint=str(tmp_path / "no.pt"))
    remote = build_worker(dataclasses.replace(backend_spec(config, "pytorch"), model=gone), "cpu", 1, weights)
    local = make_backend(config, "pytorch")
    images, hw = _batch(2, 300)
    images[600] = torch.zeros(2, 3, 600, 600, dtype=torch.uint8)
    images[300][1].fill_(200)
    for a, b in zip(remote.predict(images, hw), local.predict(images, hw)):
        assert torch.equal(a, b)


def test_what_a_worker_builds_from_is_data_the_driver_worked_out(fast_conf):
    """The worker's factory refers to nothing above backends/ and ground/, and the CUDA graph shapes of
    an Offline run (which need user.conf) are in it already."""
    import pickletools

    from ray import cloudpickle
    config = load_config(None, {"run": {"scenario": "Offline", "user_conf": str(fast_conf), "batch_size": 24,
                                        "offline_expected_qps": 100}})
    spec = backend_spec(config, "pytorch")
    assert spec.graph_sizes == (24, 16, 1)         # 256 samples (min_query_count): 10 batches of 24 and one of 16
    modules = {str(arg).split()[0] for op, arg, _ in pickletools.genops(cloudpickle.dumps(
        functools.partial(build_worker, spec))) if op.name in ("GLOBAL", "SHORT_BINUNICODE", "BINUNICODE")
        and str(arg).split(".")[0] in ("backends", "ground", "harness", "qsl", "run")}
    assert "backends.factory" in modules and not {m for m in modules if m.split(".")[0] in ("harness", "qsl", "run")}


def test_workers_import_only_what_the_job_ships(ray_cluster):
    """The nodes of these tests are as remote as a real cluster's: the checkout is not on their path."""
    import ray

    @ray.remote(num_cpus=0)
    def probe():
        import importlib.util
        return {m: importlib.util.find_spec(m) is not None for m in ("backends", "ground", "harness", "qsl")}, \
            sys.path, os.getcwd()
    found, path, cwd = ray.get(probe.remote())
    assert found == {"backends": True, "ground": True, "harness": False, "qsl": False}
    assert str(ROOT) not in path and not cwd.startswith(str(ROOT))


def test_the_call_deadline_follows_the_server_bound(fast_conf):
    def deadline(**run):
        return call_deadline_s(Config(run=RunConfig(user_conf=str(fast_conf), executor="ray", **run)))
    assert deadline(scenario="Offline") == 600.0
    assert deadline(scenario="Server") == 5.0                     # 10 x 100 ms is below the 5 s floor
    fast_conf.write_text(fast_conf.read_text().replace("target_latency = 100", "target_latency = 2000"))
    assert deadline(scenario="Server") == 20.0
    assert deadline(scenario="Server", ray_call_timeout_s=0.25) == 0.25


def _accuracy_log(config: Config, tmp_path: Path, name: str) -> dict[int, str]:
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, output_dir=str(tmp_path / name)))
    from harness.run.backend import close_backend, make_backend
    backend = make_backend(config, "pytorch")
    try:
        result = run_benchmark(config, backend=backend)
    finally:
        close_backend(backend)
    assert result.exit_code == 0 and result.runs[0].failures == []
    log = json.loads((result.runs[0].out_dir / "mlperf_log_accuracy.json").read_text())
    return {e["qsl_idx"]: e["data"] for e in log}


def test_accuracy_log_is_byte_for_byte_the_local_one(ray_cluster, synthetic_coco, fast_conf, tmp_path):
    """The demo model and data, Offline accuracy: two Ray workers on two nodes against the local run.

    One torch thread on both sides, as each Ray worker has: in fp32 (precision auto on a CPU without native
    bf16) the CPU kernels' last bit depends on the thread count."""
    config = load_config(ROOT / "configs" / "demo.toml", {
        "data": {"data_dir": str(synthetic_coco)},
        "run": {"user_conf": str(fast_conf), "mode": "accuracy", "device": "cpu", "batch_size": 3, "threads": 1}})
    local = _accuracy_log(config, tmp_path, "local")
    remote = _accuracy_log(dataclasses.replace(config, run=dataclasses.replace(
        config.run, executor="ray", ray_address=ray_cluster.address, ray_workers=2)), tmp_path, "ray")
    assert len(local) == 8 and remote == local



def test_one_worker_per_gpu_and_a_node_that_cannot_use_its_gpu_is_named(ray_cluster):
    """A node that declares a GPU it cannot drive: the worker placed on it says which node and why."""
    import ray

    from backends.ray.cluster import RayClusterError
    node = ray_cluster.add_node(num_cpus=1, num_gpus=1)
    ray_cluster.wait_for_nodes()
    try:
        with pytest.raises(RayClusterError, match=r"^worker 0 on node \S+.* could not build its backend: "
                                                  r"RuntimeError: device 'cuda' requested but no CUDA GPU"):
            make_ray_backend(Config(model=ModelConfig(random_weights=True),
                                    run=RunConfig(executor="ray", ray_address=ray_cluster.address)), "pytorch")
    finally:
        ray_cluster.remove_node(node)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(n["Alive"] and n["Resources"].get("GPU") for n in ray.nodes()):
            time.sleep(0.2)


def test_no_cluster_at_the_address_is_one_line_and_exit_status_2(synthetic_coco, fast_conf, capsys):
    assert run_py.main(["--backend", "null", "--data", str(synthetic_coco), "--user-conf", str(fast_conf),
                        "--executor", "ray", "--ray-address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("error: --ray-address 127.0.0.1:1: no Ray cluster answers there (")


def test_simulated_devices_one_per_ray_worker(ray_cluster, synthetic_coco, fast_conf, tmp_path, capsys):
    """--backend simulated --sim-devices 2: two actors, each one device served by two workers, as on a GPU."""
    code = run_py.main(["--backend", "simulated", "--sim-devices", "2", "--sim-batch-ms", "2", "0.5",
                        "--data", str(synthetic_coco), "--user-conf", str(fast_conf), "--output", str(tmp_path),
                        "--executor", "ray", "--ray-address", ray_cluster.address, "--offline-expected-qps", "2000"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "(backend simulated on Ray, 4 workers on 2 nodes, SIMULATED" in out and "failed samples: 0" in out
