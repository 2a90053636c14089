"""LoadGen settings: the official ssd-resnet34 values, the run config's hints, and clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.settings.config import RunConfig
from harness.settings.loadgen import SettingsError, make_test_settings

ROOT = Path(__file__).resolve().parent.parent


def test_user_conf_carries_official_values():
    import mlperf_loadgen as lg
    run = RunConfig()
    server = make_test_settings(ROOT / "user.conf", "Server", "performance", run)
    assert server.server_target_latency_ns == 100 * 1000 * 1000
    assert server.server_target_latency_percentile == pytest.approx(0.99)
    assert server.performance_sample_count_override == 64
    assert server.min_duration_ms == 600000
    assert server.scenario == lg.TestScenario.Server and server.mode == lg.TestMode.PerformanceOnly
    offline = make_test_settings(ROOT / "user.conf", "Offline", "accuracy", run)
    assert offline.min_query_count == 24576 and offline.mode == lg.TestMode.AccuracyOnly
    single = make_test_settings(ROOT / "user.conf", "SingleStream", "performance", run)
    assert single.single_stream_target_latency_percentile == pytest.approx(0.90)
    assert single.min_query_count == 1024
    multi = make_test_settings(ROOT / "user.conf", "MultiStream", "performance", run)
    assert multi.multi_stream_samples_per_query == 8
    assert multi.multi_stream_target_latency_percentile == pytest.approx(0.99)


def test_settings_repeatable_in_one_process_and_hints_from_run_config():
    run = RunConfig(offline_expected_qps=123.0, server_target_qps=45.0, singlestream_expected_latency_ms=7.0)
    first = make_test_settings(ROOT / "user.conf", "Offline", "performance", run)
    again = make_test_settings(ROOT / "user.conf", "Offline", "performance", run)
    # LoadGen's FromConfig(conf_type=1) drops the built-in conf (and its seeds) on a second call; ours must not.
    assert again.qsl_rng_seed == first.qsl_rng_seed != 0
    assert again.schedule_rng_seed == first.schedule_rng_seed != 0
    assert again.offline_expected_qps == 123.0 and again.server_target_qps == 45.0
    assert again.single_stream_expected_latency_ns == 7_000_000
    assert again.server_num_issue_query_threads == 0


def test_short_conf_is_short():
    s = make_test_settings(ROOT / "configs" / "short.conf", "SingleStream", "performance", RunConfig())
    assert s.min_duration_ms <= 3000 and s.min_query_count < 1024


def test_missing_and_bad_user_conf(tmp_path):
    with pytest.raises(SettingsError, match=r"nope\.conf does not exist"):
        make_test_settings(tmp_path / "nope.conf", "Offline", "performance", RunConfig())
    bad = tmp_path / "bad.conf"
    bad.write_text("ssd-resnet34.Server.target_latency = fast\n")
    with pytest.raises(SettingsError, match=r"cannot parse the settings file .*bad\.conf"):
        make_test_settings(bad, "Server", "performance", RunConfig())


def test_find_peak_is_server_only():
    with pytest.raises(SettingsError, match="find-peak"):
        make_test_settings(ROOT / "user.conf", "Offline", "find-peak", RunConfig())
