"""Rules profiles: the round's seeds reach LoadGen's detail log, TEST05 its own, and each round its audit list."""
from __future__ import annotations

import dataclasses

import pytest

from backends.null import NullBackend
from harness.results.loadgen_log import read_mllog
from harness.run.benchmark import run_benchmark
from harness.run.dataset import Dataset
from harness.run.preflight import mode_runs
from harness.settings.config import load_config
from harness.settings.loadgen import make_test_settings
from harness.settings.rules import RULES
from ground.errors import ConfigError
from qsl.memory_qsl import MemoryQSL
from tests.test_harness_scenarios import HINTS

# mlcommons/inference v2.0 mlperf.conf and compliance/nvidia/TEST05/audit.config, written out here so that a
# change of the profile's values shows up as a failing test.
V20_SEEDS = {"qsl_rng_seed": 6655344265603136530, "sample_index_rng_seed": 15863379492028895792,
             "schedule_rng_seed": 12662793979680847247}
V20_TEST05_SEEDS = {"qsl_rng_seed": 313588358309856706, "sample_index_rng_seed": 471397156132239067,
                    "schedule_rng_seed": 413914573387865862}


def _run(mode: str = "performance", **extra):
    return load_config(None, {"run": {"scenario": "Offline", "mode": mode, **HINTS, **extra}}).run


def test_each_round_has_its_audit_list():
    assert mode_runs(_run("submission")) == ("accuracy", "performance", "TEST01", "TEST04-A", "TEST04-B", "TEST05")
    assert mode_runs(_run("submission", rules="v2.0")) == mode_runs(_run("submission"))   # v2.0 is the default
    assert mode_runs(_run("submission", rules="none")) == ("accuracy", "performance", "TEST01", "TEST04")
    assert mode_runs(_run("performance")) == ("performance",)
    with pytest.raises(ConfigError, match=r"run.rules must be one of v2.0, none; got 'v9.9'"):
        _run(rules="v9.9")


def test_rules_set_the_rounds_values_and_user_conf_still_wins(tmp_path):
    conf = tmp_path / "user.conf"
    conf.write_text("ssd-resnet34.Offline.min_duration = 1500\n")
    s = make_test_settings(conf, "Offline", "performance", _run())
    assert (s.qsl_rng_seed, s.sample_index_rng_seed, s.schedule_rng_seed) == tuple(V20_SEEDS.values())
    assert s.min_duration_ms == 1500                   # the file is applied after the round's 600000
    assert s.min_query_count == 24576 and s.performance_sample_count_override == 64 and not s.test05
    server = make_test_settings(conf, "Server", "performance", _run())
    assert server.server_target_latency_ns == 100 * 10**6 and server.min_duration_ms == 600000
    test05 = make_test_settings(conf, "Offline", "TEST05", _run())
    assert test05.test05 and (test05.test05_qsl_rng_seed, test05.test05_sample_index_rng_seed,
                              test05.test05_schedule_rng_seed) == tuple(V20_TEST05_SEEDS.values())
    own = make_test_settings(conf, "Offline", "performance", _run(rules="none"))
    assert own.qsl_rng_seed not in (0, V20_SEEDS["qsl_rng_seed"])     # LoadGen 6.0.17's built-in seed
    assert "*.*.qsl_rng_seed = 6655344265603136530" in RULES["v2.0"].mlperf_conf()


def test_the_detail_log_holds_the_rounds_seeds_and_test05_its_own(tmp_path, fast_conf, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(None, {"run": {"scenario": "SingleStream", "mode": "submission", "user_conf": str(fast_conf),
                                        "output_dir": str(tmp_path / "out"), **HINTS}})
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, mode="performance"))
    run_benchmark(config, NullBackend(), Dataset(MemoryQSL(20)))
    from harness.run.loadgen_run import run_loadgen
    scen = tmp_path / "out" / "default" / "ssd-resnet34" / "SingleStream"
    run_loadgen(config, "TEST05", NullBackend(), Dataset(MemoryQSL(20)), scen / "TEST05")
    for folder, seeds in (("performance/run_1", V20_SEEDS), ("TEST05", V20_TEST05_SEEDS)):
        logged = read_mllog(scen / folder / "mlperf_log_detail.txt")
        assert {k: logged[f"effective_{k}"] for k in seeds} == seeds, folder
    assert "Test05 flag detected" in (scen / "TEST05" / "mlperf_log_detail.txt").read_text()
