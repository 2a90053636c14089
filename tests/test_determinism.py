"""On a CPU a sample's response bytes do not depend on its batch: alone or in any scenario's batches.

The tiny model uses only the last three feature maps (5x5, 3x3, 1x1 at 257 px): there the CPU convolution
kernels block across the batch, so a batched forward differs from a single one in the last bits, and every
detection comes from those maps. The per-image execution the harness uses on a CPU
(harness/sut/per_image.py, on by default in ``build_backend``) is what keeps the bytes identical.
"""
from __future__ import annotations

import json

import pytest

from harness.run.backend import build_backend
from harness.run.benchmark import run_benchmark
from harness.run.dataset import open_dataset
from harness.settings.config import load_config
from harness.sut.per_image import GuardedBackend
from harness.sut.response import to_record

TINY_MODEL = {"backbone": "resnet18", "image_size": [257, 257], "num_classes": 7, "random_weights": True,
              "small_mask": [0, 0, 0, 1, 1, 1], "large_mask": [0, 0, 0, 1, 1, 1]}
HINTS = {"offline_expected_qps": 2000.0, "server_target_qps": 2000.0, "batch_size": 8, "server_max_batch": 8,
         "singlestream_expected_latency_ms": 0.01, "multistream_expected_latency_ms": 0.01}
# Short runs for a model of tens of ms per image: a few dozen samples each.
TINY_CONF = """\
ssd-resnet34.*.performance_sample_count_override = 8
ssd-resnet34.*.min_duration = 200
ssd-resnet34.*.min_query_count = 16
ssd-resnet34.Offline.min_query_count = 24
ssd-resnet34.Server.target_latency = 100
ssd-resnet34.MultiStream.samples_per_query = 8
"""


def _config(root, scenario="Offline", mode="accuracy", **run):
    return load_config(None, {"model": TINY_MODEL,
                              "data": {"data_dir": str(root["coco"]), "cache_dir": str(root["tmp"] / "cache")},
                              "run": {"scenario": scenario, "mode": mode, "device": "cpu", "threads": 1,
                                      "user_conf": str(root["conf"]), "output_dir": str(root["tmp"] / scenario),
                                      **HINTS, **run}})


@pytest.fixture(scope="module")
def tiny(synthetic_coco, tmp_path_factory):
    """The tiny model through ``build_backend``, the synthetic set, and each image's bytes when run alone."""
    tmp = tmp_path_factory.mktemp("determinism")
    (tmp / "tiny.conf").write_text(TINY_CONF)
    root = {"coco": synthetic_coco, "tmp": tmp, "conf": tmp / "tiny.conf"}
    config = _config(root)
    backend = build_backend(config)
    dataset = open_dataset(config.data, backend.sizes, progress=False)
    qsl = dataset.qsl
    qsl.load(list(range(qsl.total_count)))
    alone = {}
    for i in range(qsl.total_count):
        images, hw = qsl.get_batch([i])
        (det,) = backend.inner.predict(images, hw)              # the plain backend, batch of one
        alone[i] = to_record(det, i).tobytes()
    qsl.unload(list(range(qsl.total_count)))
    root.update(backend=backend, dataset=dataset, alone=alone)
    return root


def test_cpu_default_runs_images_one_by_one(tiny):
    assert isinstance(tiny["backend"], GuardedBackend) and tiny["backend"].per_image
    assert all(len(b) > 0 for b in tiny["alone"].values())      # every image has detections to compare


@pytest.mark.parametrize("scenario", ["SingleStream", "MultiStream", "Offline", "Server"])
def test_every_scenario_logs_the_bytes_of_each_image_alone(tiny, scenario, tmp_path, monkeypatch):
    """The one test of the property on the real network: each scenario batches differently (Offline and Server
    in up to 8, MultiStream 8 per query with padding, SingleStream one), and every logged response is the image's
    own bytes, wherever it sat in its batch."""
    monkeypatch.chdir(tmp_path)
    result = run_benchmark(_config(tiny, scenario), tiny["backend"], tiny["dataset"])
    (run,) = result.runs
    assert run.failures == []
    entries = json.loads((run.out_dir / "mlperf_log_accuracy.json").read_text())
    assert {e["qsl_idx"] for e in entries} == set(tiny["alone"])
    for e in entries:                                            # MultiStream repeats padded samples: all equal
        assert bytes.fromhex(e["data"]) == tiny["alone"][e["qsl_idx"]], (scenario, e["qsl_idx"])


def test_test01_passes_byte_for_byte_with_the_real_network(tiny, tmp_path, monkeypatch):
    """Offline submission: the performance run's sampled responses equal the accuracy run's, byte for byte."""
    monkeypatch.chdir(tmp_path)
    # An expected rate of 20/s sizes each Offline query by min_query_count (24 samples), not by duration.
    config = _config(tiny, "Offline", "submission", offline_expected_qps=20.0)
    result = run_benchmark(config, tiny["backend"], tiny["dataset"])
    test01 = next(a for a in result.audits if a.mode == "TEST01").audit
    accuracy = test01.verdicts[0]
    assert accuracy.check == "TEST01 accuracy" and accuracy.passed and "TEST PASS" in accuracy.lines, accuracy.lines
    assert "identical byte for byte" in accuracy.reason


@pytest.mark.parametrize("setting, per_image, guarded", [
    ("auto", None, True), ("on", None, True), ("off", None, False), ("off", True, True), ("on", False, False)])
def test_batch_invariant_setting_and_explicit_per_image(tiny, setting, per_image, guarded, monkeypatch):
    from backends.pytorch.backend import PyTorchBackend
    monkeypatch.setattr(PyTorchBackend, "warmup", lambda self, batch_sizes=None: None)
    backend = build_backend(_config(tiny, batch_invariant=setting), per_image=per_image)
    assert isinstance(backend, GuardedBackend) == guarded
    assert not guarded or backend.per_image


@pytest.mark.parametrize("scenario, setting, expected", [
    ("Offline", "off", (8, 2, 1)), ("Server", "off", (6, 2, 1)), ("MultiStream", "off", (5, 2, 1)),
    ("SingleStream", "off", (1,)), ("Offline", "auto", (1,))])
def test_build_backend_warms_up_the_batch_sizes_of_the_run(tiny, scenario, setting, expected, monkeypatch):
    """So that no compile or graph capture happens in a timed run; per image the network sees only 1."""
    from backends.pytorch.backend import PyTorchBackend
    seen = []
    monkeypatch.setattr(PyTorchBackend, "warmup", lambda self, batch_sizes=None: seen.append(batch_sizes))
    build_backend(_config(tiny, scenario=scenario, batch_invariant=setting, server_max_batch=6,
                          multistream_samples=5))
    assert seen == [expected]


def test_warmup_sizes_with_cuda_graphs_cover_every_batch_up_to_the_largest(tiny):
    from harness.run.backend import warmup_batch_sizes
    assert warmup_batch_sizes(_config(tiny, scenario="Server", server_max_batch=4), True) == (4, 3, 2, 1)
    assert warmup_batch_sizes(_config(tiny, scenario="SingleStream"), True) == (1,)
