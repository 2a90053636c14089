"""The LoadGen settings the benchmarks write pass the project's own user.conf check."""
from __future__ import annotations

import pytest

from benchmarks import common
from harness.settings.user_conf import parse_user_conf


@pytest.mark.parametrize("latency_ms", [100.0, 5324.7])
def test_benchmark_conf_is_a_valid_user_conf_with_a_whole_ms_bound(tmp_path, latency_ms):
    path = common.write_conf(tmp_path / "bench.conf", 2.5, min_queries=300, latency_ms=latency_ms)
    conf = parse_user_conf(path)
    assert conf.lookup("ssd-resnet34", "Server", "target_latency").value == pytest.approx(-(-latency_ms // 1))
    assert conf.lookup("ssd-resnet34", "Offline", "min_duration").value == 2500


def test_benchmark_conf_still_sets_its_own_counts_under_the_rounds_rules(tmp_path):
    """v2.0's rules (the default) set 600 s and 24,576 Offline samples; a benchmark's file, applied after, wins."""
    from harness.settings.config import RunConfig
    from harness.settings.loadgen import make_test_settings
    path = common.write_conf(tmp_path / "bench.conf", 2.5, min_queries=300)
    settings = make_test_settings(path, "Offline", "performance", RunConfig(rules="v2.0"))
    assert (settings.min_duration_ms, settings.min_query_count) == (2500, 300)
    assert settings.qsl_rng_seed == 6655344265603136530      # the seeds stay the round's
