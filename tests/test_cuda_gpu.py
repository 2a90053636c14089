"""The CUDA path on a real GPU (skipped without one; benchmarks/gpu_suite.py runs these first): capture only
at warm-up, one capture stream per worker, two workers at once, graph memory against its estimate and the
up-front refusal, the largest batch measured and a capture out of memory made the designed error,
torch.compile per worker with its compiles counted, the host slot's copy done when predict returns, NMS with
one host sync and the CPU's detections, per-image slices of a staged batch, the CUDA math flags."""
from __future__ import annotations

import threading

import pytest
import torch

from backends.pytorch.graph_memory import GraphMemoryError
from harness.sut.per_image import GuardedBackend
from tests.tiny_models import SIZE, tiny_backend, tiny_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _batch(n):
    images, hw = tiny_inputs()
    reps = -(-n // 2)
    return {SIZE: torch.cat([images[SIZE]] * reps)[:n].pin_memory()}, torch.cat([hw] * reps)[:n]


def _close(a_list, b_list, atol=1e-3):
    for a, b in zip(a_list, b_list):
        assert a.shape == b.shape and torch.equal(a[:, 5], b[:, 5])
        torch.testing.assert_close(a, b, rtol=0, atol=atol)


def test_cuda_captures_only_at_warmup_and_runs_a_new_shape_eagerly():
    backend = tiny_backend("cuda:0", precision="fp16")
    eager = tiny_backend("cuda:0", precision="fp16", cuda_graphs=False)
    backend.warmup((2, 1))
    runners = backend.graph_runners()
    assert len(runners) == len(backend.workers()) == 2
    assert all(r.shapes == [(2, 3, SIZE, SIZE), (1, 3, SIZE, SIZE)] for r in runners)
    assert len({id(r._stream) for r in runners}) == 2 and len({id(r._pool) for r in runners}) == 2
    _close(backend.predict(*_batch(2)), eager.predict(*_batch(2)))           # replayed
    _close(backend.predict(*_batch(3)), eager.predict(*_batch(3)))           # not captured: eager
    assert runners[0].eager_calls == {(3, 3, SIZE, SIZE): 1} and len(runners[0].shapes) == 2


def test_cuda_two_workers_predict_at_once_and_agree():
    backend = tiny_backend("cuda:0", precision="fp16")
    backend.warmup((4, 1))
    batches = [_batch(4) for _ in range(6)] + [_batch(1)]
    alone = [backend.predict(*b) for b in batches]
    out = [None, None]

    def run(i):
        out[i] = [backend.workers()[i].predict(*b) for b in batches]
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got in out:
        for a, b in zip(got, alone):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(not r.eager_calls for r in backend.graph_runners())


def test_cuda_graph_memory_is_within_its_estimate():
    backend = tiny_backend("cuda:0", precision="fp16")
    sizes = (8, 3, 1)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved(0)
    backend.warmup(sizes)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    measured = torch.cuda.memory_reserved(0) - before
    estimate = len(backend.workers()) * backend.graph_memory(sizes)[0].total
    # the allocator rounds small blocks up to 2 MiB segments: a loose bound at this tiny size
    assert 0 < measured <= 1.5 * estimate + 64 * 2 ** 20, (measured, estimate)


def test_cuda_refuses_graphs_that_cannot_fit_before_capturing(monkeypatch):
    backend = tiny_backend("cuda:0", precision="fp16")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 ** 20, 2 ** 30))
    with pytest.raises(GraphMemoryError, match="1 MiB|0.0 GiB free"):
        backend.warmup((8, 1))
    assert all(r.shapes == [] for r in backend.graph_runners())


def test_cuda_compile_per_worker_with_graphs(monkeypatch, caplog):
    from backends.pytorch import network
    monkeypatch.setattr(network, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    backend = tiny_backend("cuda:0", precision="fp16", compile=True)
    eager = tiny_backend("cuda:0", precision="fp16", cuda_graphs=False)
    before = network.COMPILES["cuda:0"]
    backend.warmup((3, 2, 1))
    runners = backend.graph_runners()
    assert runners[0].model is not runners[1].model and all(r.eager is backend.model for r in runners)
    # a dynamic batch: at most a batch of 1 and any other batch per worker, not one compile per batch size
    assert 0 < network.COMPILES["cuda:0"] - before <= 2 * len(backend.workers())
    assert not [r for r in caplog.records if "could not be compiled" in r.message]
    _close(backend.predict(*_batch(2)), eager.predict(*_batch(2)))


def test_cuda_capture_measures_the_largest_batch():
    backend = tiny_backend("cuda:0", precision="fp16")
    backend.warmup((4, 1))
    measured = backend.capture_memory
    assert measured.measured > 0 and measured.scale >= 1


def test_cuda_host_slot_copy_is_done_when_predict_returns():
    backend = tiny_backend("cuda:0", precision="fp16")
    backend.warmup((2,))
    staged = backend.stage(*_batch(2))
    backend.predict(*staged)
    assert staged[0].ready.query()


def test_cuda_postprocess_syncs_once_and_gives_the_cpu_detections():
    from backends.ssd.postprocess import postprocess
    from benchmarks.gpu_nms import host_syncs
    from tests.test_postprocess import _clusters
    boxes, scores = _clusters(0, n=4, c=21, b=3000, ties=True)
    gpu_boxes, gpu_scores = boxes.cuda(), scores.cuda()
    postprocess(gpu_boxes, gpu_scores)
    got, syncs = host_syncs(lambda: postprocess(gpu_boxes, gpu_scores))
    assert syncs <= 1
    want = postprocess(boxes, scores)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(want, got)) and sum(len(d) for d in want) > 100


def test_cuda_per_image_slices_of_a_staged_batch():
    backend = tiny_backend("cuda:0", precision="fp16")
    backend.warmup((1,))
    images, hw = _batch(2)
    staged = backend.stage(images, hw)
    got = GuardedBackend(backend, per_image=True).predict(*staged)
    want = [backend.predict({SIZE: images[SIZE][i:i + 1]}, hw[i:i + 1])[0] for i in range(2)]
    _close(got, want, atol=0)


def test_cuda_math_is_set_at_load():
    tiny_backend("cuda:0", precision="fp32")
    assert torch.backends.cudnn.benchmark is True and torch.backends.cudnn.allow_tf32 is False


def test_cuda_capture_out_of_memory_is_the_designed_error(monkeypatch):
    """Last in this file: a capture that fails part-way leaves the process's CUDA state in doubt."""
    backend = tiny_backend("cuda:0", precision="fp16")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (total, total))   # the estimate passes
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved(0) + 2 ** 20) / total, 0)
    try:
        with pytest.raises(GraphMemoryError, match="ran out of device memory|need about"):
            backend.warmup((8, 1))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
