"""The Ray cluster the tests of this folder share."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="package")
def ray_cluster():
    """A Ray cluster of two nodes on this machine (``ray.cluster_utils``), this process its driver.

    Started once for this folder's tests (Ray takes seconds to start) and stopped after them, so no Ray
    process runs beside the rest of the suite. Each node declares 1 CPU, so a test asking for more
    workers than that shares them out in fractions. Tests that add a node remove it again.
    """
    import ray
    from ray.cluster_utils import Cluster

    from backends.ray.cluster import code_env
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env=code_env(("backends", "harness")), logging_level="WARNING")
    yield cluster
    ray.shutdown()
    cluster.shutdown()
