"""What Ray workers reserve, and the --executor flags; none of this needs a Ray cluster."""
from __future__ import annotations

import pytest

from backends.ray.cluster import RayClusterError, check_reachable, check_versions
from backends.ray.placement import Node, Slot, plan_workers
from harness.settings.cli import config_from_args
from harness.settings.flags import benchmark_parser
from ground.errors import ConfigError

A = Node("a", "10.0.0.1", "gpu-a", cpus=8, gpus=2)
B = Node("b", "10.0.0.2", "gpu-b", cpus=4, gpus=1)
C = Node("c", "10.0.0.3", "cpu-c", cpus=3, gpus=0)


def test_one_worker_per_gpu_of_the_cluster_by_default():
    slots = plan_workers([A, B, C], "auto", None)
    # Each GPU worker reserves one GPU and one CPU where the nodes have enough, a share where they do not.
    assert slots == [Slot(True, 1.0, "cuda", 0)] * 3 and slots[0].bundle() == {"CPU": 1.0, "GPU": 1.0}
    assert [s.num_cpus for s in plan_workers([Node("d", "10.0.0.4", "", cpus=1, gpus=4)], "cuda", None)] == [0.25] * 4
    assert len(plan_workers([A, B], "cuda", 2)) == 2
    assert Slot(True, 0.0, "cuda", 0).bundle() == {"GPU": 1.0}   # a bundle never asks for 0 of anything


def test_cpu_workers_one_per_node_by_default_or_an_equal_share_of_the_smallest_node():
    slots = plan_workers([A, C], "cpu", None)          # one per node, each the smallest node's 3 CPUs
    assert [(s.gpu, s.num_cpus, s.threads) for s in slots] == [(False, 3.0, 3)] * 2
    slots = plan_workers([C], "cpu", 2)               # 3 CPUs / 2 workers: one whole CPU each
    assert [(s.num_cpus, s.threads) for s in slots] == [(1.0, 1), (1.0, 1)]
    slots = plan_workers([C], "cpu", 4, threads=2)    # a fraction below one; --threads wins
    assert [(s.num_cpus, s.threads) for s in slots] == [(0.75, 2)] * 4
    slots = plan_workers([A, C], "cpu", 4)            # two per node when spread: 3 / 2 -> 1 each
    assert [s.num_cpus for s in slots] == [1.0] * 4
    assert [s.gpu for s in plan_workers([A, B, C], "auto", 1)] == [True]   # GPUs first with auto


def test_a_cluster_without_the_gpus_asked_for_is_refused_with_its_inventory():
    with pytest.raises(RayClusterError, match=r"--device cuda: the Ray cluster has no GPU "
                                              r"\(node 10.0.0.3 \(cpu-c\): 3 CPU, 0 GPU\)"):
        plan_workers([C], "cuda", None)
    with pytest.raises(RayClusterError, match=r"--ray-workers 4 asks for 4 GPU workers but the Ray cluster has 3 "
                                              r"GPU\(s\).*ask for at most 3"):
        plan_workers([A, B], "auto", 4)
    with pytest.raises(RayClusterError, match="--device cuda:1: with --executor ray each worker gets a device"):
        plan_workers([A], "cuda:1", None)
    with pytest.raises(RayClusterError, match="no node with CPUs"):
        plan_workers([Node("g", "10.0.0.9", "", cpus=0, gpus=0)], "cpu", None)


def test_differing_versions_name_the_worker_and_both_versions():
    check_versions({"torch": "2.14.1"}, {"torch": "2.14.1"}, "worker 0")
    with pytest.raises(RayClusterError, match=r"worker 1 on node 10.0.0.2 runs torch 2.13.0 \(this process: "
                                              r"2.14.1\); install the same versions on every node"):
        check_versions({"ray": "2.60.0", "torch": "2.14.1"}, {"ray": "2.60.0", "torch": "2.13.0"},
                       "worker 1 on node 10.0.0.2")


def test_an_address_where_nothing_listens_is_refused_at_once():
    with pytest.raises(RayClusterError, match=r"--ray-address 127.0.0.1:1: no Ray cluster answers there .*"
                                              r"ray start --head"):
        check_reachable("127.0.0.1:1")
    with pytest.raises(RayClusterError, match="expected host:port"):
        check_reachable("10.0.0.1")
    with pytest.raises(RayClusterError, match="Ray Client"):
        check_reachable("ray://10.0.0.1:10001")


def _config(*flags: str, data):
    return config_from_args(benchmark_parser().parse_args(["--data", str(data), *flags]))


def test_executor_flags_reach_the_run_config(synthetic_coco):
    run = _config("--executor", "ray", "--ray-address", "10.0.0.1:6379", "--ray-workers", "3",
                  "--ray-call-timeout", "7.5", data=synthetic_coco).run
    assert (run.executor, run.ray_address, run.ray_workers, run.ray_call_timeout_s) == ("ray", "10.0.0.1:6379", 3,
                                                                                       7.5)
    assert _config(data=synthetic_coco).run.executor == "local"


@pytest.mark.parametrize("flags, message", [
    (("--ray-address", "10.0.0.1:6379"), r"run.ray_address needs run.executor = \"ray\".*\(given by --ray-address\)"),
    (("--ray-workers", "2"), r"run.ray_workers needs run.executor"),
    (("--executor", "ray", "--ray-workers", "0"), r"--ray-workers must be positive"),
    (("--executor", "ray", "--ray-call-timeout", "-1"), r"--ray-call-timeout must be positive"),
])
def test_bad_executor_flags_are_one_clear_error(synthetic_coco, flags, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        _config(*flags, data=synthetic_coco)


def test_the_guard_hands_out_only_the_workers_of_a_backend_that_is_none_of_them():
    """A backend of remote workers is not one of its own workers: the pipeline gets exactly its workers."""
    from backends.null import NullBackend
    from harness.sut.per_image import GuardedBackend

    class Remote(NullBackend):
        def __init__(self):
            super().__init__()
            self.all = [NullBackend(), NullBackend()]

        def workers(self):
            return self.all

    remote = Remote()
    assert [g.inner for g in GuardedBackend(remote).workers()] == remote.all
