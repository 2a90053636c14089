"""Warm-up sees every batch shape a run gives the network, the Offline remainder included.

With CUDA graphs a shape first seen during a run would run eagerly (backends/pytorch/cuda_graphs.py), so
harness/run/backend.py predicts the shapes from LoadGen's settings. These tests hold the
prediction against LoadGen 6.0.17 itself: its Offline query sizes, and every batch a real
Offline run (accuracy, performance, TEST01, TEST04) hands the backend.
"""
from __future__ import annotations

import threading

import pytest

from backends.null import NullBackend
from harness.run.backend import (
    loadgen_offline_samples,
    offline_query_sizes,
    warmup_batch_sizes,
)
from harness.run.benchmark import run_benchmark
from harness.run.dataset import open_dataset
from harness.settings.config import load_config


def _loadgen_offline_queries(min_duration_ms, min_query_count, qps, total=100, perf=30, accuracy=False):
    """The sizes of the queries LoadGen issues to a SUT that completes every sample at once."""
    import mlperf_loadgen as lg
    sizes = []

    def issue(samples):
        sizes.append(len(samples))
        lg.QuerySamplesComplete([lg.QuerySampleResponse(s.id, 0, 0) for s in samples])

    settings = lg.TestSettings()
    settings.scenario = lg.TestScenario.Offline
    settings.mode = lg.TestMode.AccuracyOnly if accuracy else lg.TestMode.PerformanceOnly
    settings.min_duration_ms, settings.min_query_count = min_duration_ms, min_query_count
    settings.offline_expected_qps = qps
    sut = lg.ConstructSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(total, perf, lambda s: None, lambda s: None)
    log = lg.LogSettings()
    log.enable_trace = False
    log.log_output.copy_summary_to_stdout = False
    lg.StartTestWithLogSettings(sut, qsl, settings, log)
    lg.DestroyQSL(qsl)
    lg.DestroySUT(sut)
    return sizes


@pytest.mark.parametrize("duration_ms, min_count, qps", [(1000, 1, 33.3), (2700, 1, 7.7), (1000, 500, 7.7),
                                                          (600000, 24576, 470.0)])
def test_offline_query_size_is_loadgens(duration_ms, min_count, qps, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                      # LoadGen writes its logs into the working directory
    assert _loadgen_offline_queries(duration_ms, min_count, qps) == [
        loadgen_offline_samples(duration_ms, min_count, qps)]
    # written out: floor(1.1 x 1.0 s x 33.3) = 36; floor(1.1 x 2.7 x 7.7) = 22; the minimum 500 wins over 8
    assert loadgen_offline_samples(1000, 1, 33.3) == 36 and loadgen_offline_samples(2700, 1, 7.7) == 22


def test_accuracy_queries_are_the_loaded_sets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _loadgen_offline_queries(1000, 1, 10.0, total=100, perf=30, accuracy=True) == [30, 30, 30, 10]


class BatchRecorder(NullBackend):
    """Records the size of every batch it is given, and on which thread."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.batches, self.lock = [], threading.Lock()

    def predict(self, images, hw):
        with self.lock:
            self.batches.append(int(hw.shape[0]))
        return super().predict(images, hw)


CONF = """\
ssd-resnet34.*.min_duration = 100
ssd-resnet34.Offline.min_query_count = 13
"""


@pytest.mark.parametrize("override, expected", [(None, (4, 1)), (5, (4, 3, 1))])
def test_every_batch_of_an_offline_submission_was_warmed_up(synthetic_coco, tmp_path, monkeypatch, override,
                                                            expected):
    """Offline submission: accuracy (sets of the perf count), performance, TEST01 and TEST04, batch 4."""
    monkeypatch.chdir(tmp_path)
    conf = tmp_path / "user.conf"
    conf.write_text(CONF + (f"ssd-resnet34.*.performance_sample_count_override = {override}\n" if override else ""))
    config = load_config(None, {
        "model": {"backbone": "resnet18", "num_classes": 7, "image_size": [257, 257]},
        "data": {"data_dir": str(synthetic_coco), "cache_dir": str(tmp_path / "cache")},
        "run": {"scenario": "Offline", "mode": "submission", "rules": "none", "batch_size": 4,
                "offline_expected_qps": 50.0,
                "user_conf": str(conf), "output_dir": str(tmp_path / "out")}})
    dataset = open_dataset(config.data, (257,), progress=False)
    queries = offline_query_sizes(config, dataset.qsl.total_count, dataset.qsl.perf_count)
    # 8 images; performance max(13, floor(1.1 x 0.1 s x 50)) = 13; sets of 8 (or of 5: 5 and 3)
    assert queries == ((13, 8) if override is None else (13, 5, 3))
    warmed = warmup_batch_sizes(config, every_size=True, offline_queries=queries)
    assert warmed == expected
    backend = BatchRecorder(config.model)
    result = run_benchmark(config, backend=backend, dataset=dataset)
    assert [r.mode for r in result.runs + result.audits] == ["accuracy", "performance", "TEST01", "TEST04"]
    assert set(backend.batches) <= set(warmed), (sorted(set(backend.batches)), warmed)
    assert 4 in backend.batches and (13 % 4) in backend.batches          # full batches and the remainder


def test_warmup_sizes_per_scenario_with_and_without_graphs(synthetic_coco, tmp_path):
    def cfg(scenario):
        return load_config(None, {"data": {"data_dir": str(synthetic_coco)},
                                  "run": {"scenario": scenario, "batch_size": 32, "server_max_batch": 4,
                                          "multistream_samples": 8}})
    assert warmup_batch_sizes(cfg("Offline"), True, (24576 + 27,)) == (32, 27, 1)       # never every size
    assert warmup_batch_sizes(cfg("Offline"), True, (64,)) == (32, 1)                  # no remainder
    assert warmup_batch_sizes(cfg("Offline"), True, (20,)) == (20, 1)                  # one short batch only
    assert warmup_batch_sizes(cfg("Offline"), True) == tuple(range(32, 0, -1))         # queries unknown
    assert warmup_batch_sizes(cfg("Server"), True) == (4, 3, 2, 1)                     # any size can form
    assert warmup_batch_sizes(cfg("MultiStream"), True) == (8, 1)
    assert warmup_batch_sizes(cfg("SingleStream"), True) == (1,)
    assert warmup_batch_sizes(cfg("Offline"), False, (24576 + 27,)) == (32, 2, 1)
