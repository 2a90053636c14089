"""The Ray cluster the tests of this folder share: nodes that cannot import this checkout."""
from __future__ import annotations

import os
import tempfile

import pytest


@pytest.fixture(scope="package")
def ray_cluster():
    """A Ray cluster of two nodes on this machine (``ray.cluster_utils``), this process its driver.

    As on a real cluster, the workers cannot import this checkout: the nodes start in an empty folder,
    and the job's runtime environment has an empty ``working_dir`` (without one, Ray puts the driver's
    working directory on every worker's path) and ships only ``backends`` and ``ground``
    (``WORKER_PACKAGES``), all a worker may need. Started once for this folder's tests (Ray takes
    seconds to start) and stopped after them, so no Ray process runs beside the rest of the suite. Each
    node declares 1 CPU, so a test asking for more workers than that shares them out in fractions.
    Tests that add a node remove it again.
    """
    import ray
    from ray.cluster_utils import Cluster

    from backends.ray.cluster import WORKER_PACKAGES, code_env
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="ray-nodes-") as elsewhere:
        os.chdir(elsewhere)
        try:
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            # log_to_driver off: the workers' own output (a killed one's stack) would land in a later test's stderr.
            ray.init(address=cluster.address, runtime_env=code_env(WORKER_PACKAGES, elsewhere), logging_level="WARNING",
                     log_to_driver=False)
        finally:
            os.chdir(here)
        yield cluster
        ray.shutdown()
        cluster.shutdown()
