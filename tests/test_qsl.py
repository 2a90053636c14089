"""The QSL: loading exactly the requested samples, batches by index, bounded memory under LoadGen."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from qsl.cache.reader import open_cache
from qsl.coco_qsl import CocoQSL, QSLError
from qsl.cache.prepare import prepare_cache
from qsl.synthetic.dataset import make_synthetic_coco

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

SIZES = (257, 320)
NUM = 7
PER_SAMPLE = sum(3 * s * s for s in SIZES)  # bytes of one sample at all sizes


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    make_synthetic_coco(root, NUM, seed=0, min_size=200, max_size=300)
    return open_cache(prepare_cache(root, SIZES, workers=1, progress=False), SIZES)


def test_counts_and_defaults(cache):
    qsl = CocoQSL(cache)
    assert qsl.total_count == NUM and qsl.perf_count == min(NUM, 64)
    assert CocoQSL(cache, perf_count=3).perf_count == 3
    with pytest.raises(QSLError, match=r"perf_count must be in 1..7"):
        CocoQSL(cache, perf_count=NUM + 1)
    assert qsl.image_ids.tolist() == cache.image_ids.tolist()
    assert qsl.image_hw.dtype == torch.int64 and qsl.image_hw.shape == (NUM, 2)
    assert qsl.loaded_bytes == 0


def test_get_batch_returns_cache_rows_in_asked_order(cache):
    qsl = CocoQSL(cache)
    qsl.load([5, 1, 3])
    assert qsl.loaded_indices == [1, 3, 5]
    assert qsl.loaded_bytes == 3 * PER_SAMPLE
    ask = [3, 5, 3, 1]  # any order, repeats allowed
    images, hw = qsl.get_batch(ask)
    assert set(images) == set(SIZES) and hw.dtype == torch.int64
    assert hw.tolist() == [cache.image_hw[i].tolist() for i in ask]
    for s in SIZES:
        assert images[s].dtype == torch.uint8 and images[s].shape == (len(ask), 3, s, s)
        for b, i in enumerate(ask):
            assert np.array_equal(images[s][b].numpy(), np.asarray(cache.arrays[s][i]))
    images, hw = qsl.get_batch(np.array([1]))  # numpy and tensor indices work too
    assert images[257].shape[0] == 1 and qsl.get_batch(torch.tensor([5]))[1].tolist() == [cache.image_hw[5].tolist()]


def test_unloaded_and_out_of_range_indices_are_errors(cache):
    qsl = CocoQSL(cache)
    with pytest.raises(QSLError, match=r"sample\(s\) \[0\] are not loaded"):
        qsl.get_batch([0])
    qsl.load([0, 1])
    qsl.load([2])  # replaces the set, does not add to it
    assert qsl.loaded_bytes == PER_SAMPLE
    with pytest.raises(QSLError, match=r"\[0, 1\] are not loaded"):
        qsl.get_batch([2, 0, 1])
    with pytest.raises(QSLError, match=r"sample index 7 is out of range: the cache holds 7 images"):
        qsl.load([1, 7])
    with pytest.raises(QSLError, match="out of range"):
        qsl.get_batch([-1])
    qsl.unload([2])
    assert qsl.loaded_bytes == 0
    with pytest.raises(QSLError, match="not loaded"):
        qsl.get_batch([2])


def test_accuracy_pattern_keeps_memory_bounded(cache):
    """LoadGen's accuracy mode: load, query and unload one perf_count set at a time."""
    perf = 3
    qsl = CocoQSL(cache, perf_count=perf)
    peak, served = 0, []
    for start in range(0, NUM, perf):
        chunk = list(range(start, min(start + perf, NUM)))
        qsl.load(chunk)
        peak = max(peak, qsl.loaded_bytes)
        assert qsl.loaded_bytes == len(chunk) * PER_SAMPLE
        images, _ = qsl.get_batch(chunk)
        served += [bool(np.array_equal(images[320][k].numpy(), cache.arrays[320][i])) for k, i in enumerate(chunk)]
        qsl.unload(chunk)
        assert qsl.loaded_bytes == 0
    assert peak == perf * PER_SAMPLE and served == [True] * NUM


def test_under_real_loadgen(cache, tmp_path):
    import mlperf_loadgen as lg  # a hard dependency: missing, the test fails
    qsl = CocoQSL(cache, perf_count=2)
    loaded_sizes, answered = [], []

    def load(indices):
        qsl.load(indices)
        loaded_sizes.append((len(indices), qsl.loaded_bytes))

    def issue(queries):
        images, hw = qsl.get_batch([q.index for q in queries])  # raises if LoadGen asked for an unloaded sample
        answered.extend(q.index for q in queries)
        lg.QuerySamplesComplete([lg.QuerySampleResponse(q.id, 0, 0) for q in queries])

    sut = lg.ConstructSUT(issue, lambda: None)
    handle = lg.ConstructQSL(qsl.total_count, qsl.perf_count, load, qsl.unload)
    settings = lg.TestSettings()
    settings.scenario = lg.TestScenario.Offline
    settings.mode = lg.TestMode.AccuracyOnly
    log = lg.LogSettings()
    log.log_output.outdir = str(tmp_path)
    lg.StartTestWithLogSettings(sut, handle, settings, log)
    lg.DestroyQSL(handle)
    lg.DestroySUT(sut)
    assert sorted(answered) == list(range(NUM))
    assert all(n <= 2 and b == n * PER_SAMPLE for n, b in loaded_sizes)
    assert qsl.loaded_bytes == 0


def test_pinned_memory_when_cuda_exists(cache):
    if not torch.cuda.is_available():
        pytest.skip("pinned memory needs CUDA")
    qsl = CocoQSL(cache, pin_memory=True)
    qsl.load([0, 1])
    images, _ = qsl.get_batch([0, 1])
    assert all(t.is_pinned() for t in qsl._loaded.values())
    assert images[257].shape == (2, 3, 257, 257)


def test_does_not_import_loadgen():
    """The harness owns LoadGen; no qsl module may import it (checked on the source, at any depth)."""
    for path in (Path(__file__).resolve().parents[1] / "qsl").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "mlperf_loadgen" for n in names), f"{path.name} imports LoadGen"
