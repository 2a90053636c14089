"""Workers are reserved all at once in a placement group, against free resources, or not at all."""
from __future__ import annotations

import functools
import time

import pytest

from backends.factory import BackendSpec, build_worker
from backends.model_config import ModelConfig

null = functools.partial(build_worker, BackendSpec("null", ModelConfig()))


def test_a_run_whose_workers_are_not_free_is_refused_in_one_line_and_holds_nothing(ray_cluster):
    import ray

    from backends.ray.backend import RayBackend
    from backends.ray.cluster import RayClusterError
    first = RayBackend.start(null, address=ray_cluster.address, device="cpu", workers=2)   # every CPU of both nodes
    try:
        assert len({s.node_id for s in first.states}) == 2
        t0 = time.monotonic()
        with pytest.raises(RayClusterError, match=r"^the Ray cluster at \S+ could not reserve 2 workers of \{CPU: 1\} "
                                                  r"within 2 s: free now 0 CPU, 0 GPU of node .*; another job holds the "
                                                  r"rest \(`ray status` shows it\)"):
            RayBackend.start(null, address=ray_cluster.address, device="cpu", workers=2, placement_timeout_s=2)
        assert time.monotonic() - t0 < 30
        assert ray.available_resources().get("CPU", 0) == 0      # the refused group reserved nothing
    finally:
        first.close()
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < 2:             # closing releases the group
        assert time.monotonic() < deadline
        time.sleep(0.2)
