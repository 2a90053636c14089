"""Shared fixtures: a fast LoadGen settings file and a tiny synthetic COCO data set."""
from __future__ import annotations

from pathlib import Path

import pytest

# LoadGen runs of about half a second: short durations and query counts, the
# official ssd-resnet34 constraints otherwise (100 ms Server bound, 8 samples
# per MultiStream query). MultiStream's p99 needs at least 662 queries for
# LoadGen's early stopping to call it VALID: the count says so, rather than
# whatever fits in 500 ms on a loaded machine (600 did once).
FAST_CONF = """\
ssd-resnet34.*.performance_sample_count_override = 64
ssd-resnet34.*.min_duration = 500
ssd-resnet34.*.min_query_count = 100
ssd-resnet34.Offline.min_query_count = 256
ssd-resnet34.MultiStream.min_query_count = 662
ssd-resnet34.Server.target_latency = 100
ssd-resnet34.MultiStream.samples_per_query = 8
"""


@pytest.fixture
def fast_conf(tmp_path: Path) -> Path:
    path = tmp_path / "fast.conf"
    path.write_text(FAST_CONF)
    return path


@pytest.fixture(scope="session")
def synthetic_coco(tmp_path_factory) -> Path:
    """A COCO-layout folder with 8 synthetic images (6 categories), made once per test session."""
    from qsl.synthetic.dataset import make_synthetic_coco
    root = tmp_path_factory.mktemp("coco")
    make_synthetic_coco(root, 8, seed=0)
    return root

