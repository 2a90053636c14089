"""Performance paths: layouts, precisions and torch.compile give fp32's detections; FLOP counts; pipeline
workers and staging; CUDA streams and graphs (CUDA-only tests skip without a GPU)."""
from __future__ import annotations

import os
import threading

import pytest
import torch

from backends.pytorch import network
from backends.model_config import ModelConfig
from backends.null import NullBackend
from benchmarks.flops import flops_per_sample, mfu, peak_fp16_tflops
from harness.sut.batching import BatchQueue
from harness.sut.completion import Completer, Sample
from harness.sut.pipeline import Pipeline
from qsl.memory_qsl import MemoryQSL
from tests.test_harness_units import feed
from tests.tiny_models import SIZE, tiny_backend, tiny_inputs

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


make_backend = tiny_backend


@pytest.fixture(scope="module")
def inputs():
    return tiny_inputs()


@pytest.fixture(scope="module")
def reference(inputs):
    """fp32, plain NCHW layout: the slow, obviously correct path."""
    return make_backend(channels_last=False).predict(*inputs)


def iou_xyxy(a, b):
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    return inter / ((a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1) - inter)


def assert_same_top_detections(reference, got, iou=0.9, score_tol=0.05, top=10):
    """Every one of the reference's ``top`` detections has a same-label twin: IoU > iou, close score."""
    for ref, det in zip(reference, got):
        assert det.dtype == torch.float32 and det.device.type == "cpu"
        assert ref.shape[0] >= top and ref[0, 4] > 0.5          # real detections exist
        for row in ref[:top]:
            same = det[det[:, 5] == row[5]]
            assert same.shape[0] > 0
            ious = iou_xyxy(row[None, :4].expand(same.shape[0], 4), same[:, :4])
            best = ious.argmax()
            assert ious[best] > iou and abs(same[best, 4] - row[4]) < score_tol


def test_channels_last_fp32_equals_nchw(inputs, reference):
    got = make_backend(channels_last=True).predict(*inputs)
    for ref, det in zip(reference, got):
        assert det.shape == ref.shape and torch.equal(det[:, 5], ref[:, 5])
        torch.testing.assert_close(det, ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_layouts_agree_with_fp32(inputs, reference, channels_last):
    backend = make_backend(precision="bf16", channels_last=channels_last)
    x = backend._normalize(inputs[0][SIZE], SIZE, 2)
    assert x.dtype == torch.bfloat16 and x.is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    # bf16 keeps 8 bits of mantissa: boxes of random weights move by a few percent of their size
    assert_same_top_detections(reference, backend.predict(*inputs), iou=0.85)


INDUCTOR = pytest.mark.skipif(not os.environ.get("SSD_TEST_INDUCTOR"),
                              reason="inductor compiles for about a minute on 2 cores; set SSD_TEST_INDUCTOR=1")


@pytest.mark.parametrize("compile_backend", ["aot_eager", pytest.param("inductor", marks=INDUCTOR)])
def test_compile_flag_compiles_and_keeps_detections(inputs, reference, compile_backend, monkeypatch):
    monkeypatch.setattr(network, "COMPILE_BACKEND", compile_backend)
    backend = make_backend(compile=True, channels_last=True)
    assert backend.detector.model is not backend.model                  # the compiled wrapper runs
    assert backend.compile_seconds is None
    backend.warmup((2,))
    assert backend.compile_seconds > 0
    got = backend.predict(*inputs)
    for ref, det in zip(reference, got):
        assert det.shape == ref.shape and torch.equal(det[:, 5], ref[:, 5])
        torch.testing.assert_close(det, ref, rtol=0, atol=1e-3)


def test_cli_flags_reach_the_model_config(synthetic_coco):
    from harness.settings.cli import config_from_args
    from harness.settings.flags import benchmark_parser
    base = ["--data", str(synthetic_coco)]
    cfg = config_from_args(benchmark_parser().parse_args(base)).model
    assert (cfg.compile, cfg.channels_last, cfg.cuda_graphs) == (False, True, True)
    args = benchmark_parser().parse_args(base + ["--compile", "--no-channels-last", "--no-cuda-graphs"])
    cfg = config_from_args(args).model
    assert (cfg.compile, cfg.channels_last, cfg.cuda_graphs) == (True, False, False)


def test_cpu_backend_has_one_worker_and_stage_is_identity(inputs):
    backend = make_backend()
    assert backend.workers() == [backend] and backend.stream is None
    images, hw = inputs
    staged_images, staged_hw = backend.stage(images, hw)
    assert staged_images is images and staged_hw is hw


# -- model FLOPs and MFU ---------------------------------------------------------------------------

def test_flops_match_the_published_ssd_resnet34_figures():
    # SPEC.md section 9: 31.7 G at 300, 124 G at 600 (2 x MACs).
    assert flops_per_sample(ModelConfig(image_size=(300, 300))) / 1e9 == pytest.approx(31.7, rel=0.005)
    assert flops_per_sample(ModelConfig(image_size=(600, 600))) / 1e9 == pytest.approx(124.0, rel=0.005)


def test_two_scale_flops_are_the_sum_of_the_passes_and_masks_cut_them():
    one = {s: flops_per_sample(ModelConfig(backbone="resnet18", image_size=(s, s))) for s in (300, 600)}
    assert flops_per_sample(ModelConfig(backbone="resnet18", image_size=(300, 600))) == one[300] + one[600]
    masked = flops_per_sample(ModelConfig(backbone="resnet18", image_size=(300, 300), small_mask=(1, 1, 0, 0, 0, 0),
                                          large_mask=(1, 1, 0, 0, 0, 0)))
    assert masked < one[300]


def test_mfu_is_rate_times_flops_over_the_peak():
    assert mfu(1000.0, 10**12, "NVIDIA H100 80GB HBM3") == pytest.approx(1000 * 1e12 / 989e12)
    assert peak_fp16_tflops("NVIDIA A100-SXM4-80GB") == 312.0 and peak_fp16_tflops("NVIDIA H200") == 989.0
    assert mfu(1000.0, 10**12, "AMD EPYC") is None


# -- pipeline: one worker per device, staging in the loader ------------------------------------------

class Recorder:
    def __init__(self):
        self.done, self.lock = [], threading.Lock()

    def response(self, sample_id, ptr, nbytes):
        return sample_id, nbytes

    def complete(self, responses):
        with self.lock:
            self.done.extend(responses)


class Staged(dict):
    """Like the CUDA backend's staged batch: a mapping with an attribute the per-sample retry must keep."""

    ready = None


class StagingWorker(NullBackend):
    """Stages by wrapping the images; predict refuses unstaged input and fails any batch with sample ``bad``."""

    def __init__(self, name, bad=None):
        super().__init__()
        self.name, self.bad, self.samples = name, bad, 0

    def stage(self, images, hw):
        staged = Staged(images)
        staged.ready = self.name
        return staged, hw

    def predict(self, images, hw):
        assert isinstance(images, Staged) and images.ready == self.name
        if self.bad is not None and (next(iter(images.values()))[:, 0, 0, 0] == self.bad).any():
            raise RuntimeError("bad sample")
        self.samples += hw.shape[0]
        return super().predict(images, hw)


class TwoWorkers(StagingWorker):
    def __init__(self, bad=None):
        super().__init__("w0", bad)
        self.other = StagingWorker("w1", bad)

    def workers(self):
        return [self, self.other]


@pytest.mark.parametrize("threaded", [True, False])
def test_workers_complete_every_sample_once_with_staged_inputs(threaded):
    rec = Recorder()
    qsl = MemoryQSL(64)
    qsl.load(range(64))
    c = Completer(rec.complete, rec.response)
    source = BatchQueue()
    backend = TwoWorkers(bad=7)
    pipe = Pipeline(backend, qsl, c, source, threaded=threaded)
    assert len(pipe.workers) == (2 if threaded else 1)
    pipe.start()
    samples = [Sample(1000 + i, i) for i in range(64)]
    c.register(samples)
    feed(pipe, source, [samples[i:i + 4] for i in range(0, 64, 4)])
    pipe.stop()
    ids = [i for i, _ in rec.done]
    assert sorted(ids) == [s.id for s in samples] and len(set(ids)) == 64          # exactly once
    assert [f.index for f in c.failures] == [7]                                    # retried alone, failed alone
    assert backend.samples + backend.other.samples == 63
    if threaded:
        assert backend.samples > 0 and backend.other.samples > 0                   # both workers computed


def test_per_image_guard_keeps_the_staged_copy_event():
    """--batch-invariant on with CUDA: every one-image slice still carries the batch's copy-ready event."""
    from harness.sut.per_image import GuardedBackend
    worker = StagingWorker("w0")
    qsl = MemoryQSL(4)
    qsl.load(range(4))
    staged = worker.stage(*qsl.get_batch([0, 1, 2, 3]))
    out = GuardedBackend(worker, per_image=True).predict(*staged)   # StagingWorker.predict checks the event
    assert len(out) == 4 and worker.samples == 4


# -- CUDA (skip without a GPU) ---------------------------------------------------------------------

@CUDA
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_graphs_match_eager(inputs, precision):
    eager = make_backend("cuda", precision=precision, cuda_graphs=False)
    graphed = make_backend("cuda", precision=precision, cuda_graphs=True)
    graphed.warmup((1, 2))
    assert sorted(graphed.detector.model.shapes) == [(1, 3, SIZE, SIZE), (2, 3, SIZE, SIZE)]
    for a, b in zip(eager.predict(*inputs), graphed.predict(*inputs)):
        assert a.shape == b.shape and torch.equal(a[:, 5], b[:, 5])
        torch.testing.assert_close(a, b, rtol=0, atol=1e-3)


@CUDA
def test_cuda_staged_pinned_batch_equals_plain_predict(inputs, reference):
    backend = make_backend("cuda", precision="fp16")
    images, hw = inputs
    pinned = {s: t.pin_memory() for s, t in images.items()}
    staged = backend.stage(pinned, hw)
    assert staged[0].ready is not None and staged[0][SIZE].device.type == "cuda"
    for a, b in zip(backend.predict(*staged), backend.predict(images, hw)):
        assert a.shape == b.shape and torch.equal(a[:, 5], b[:, 5])
    assert_same_top_detections(reference, backend.predict(*staged), score_tol=0.02)


@CUDA
def test_cuda_has_workers_on_every_visible_gpu():
    from backends.pytorch.backend import CUDA_WORKERS_PER_GPU
    backend = make_backend("cuda")
    gpus = torch.cuda.device_count()
    assert sorted(w.device.index for w in backend.workers()) == sorted(list(range(gpus)) * CUDA_WORKERS_PER_GPU)
    assert len({id(w.stream) for w in backend.workers()}) == gpus * CUDA_WORKERS_PER_GPU
    one = make_backend("cuda:0")
    assert len(one.workers()) == CUDA_WORKERS_PER_GPU and all(w.model is one.model for w in one.workers())
    assert all(w.stream is not None and w.copy_stream is not None for w in backend.workers())


def test_batch_invariant_and_trust_pickle_flags_reach_the_config(synthetic_coco):
    from harness.settings.cli import config_from_args
    from harness.settings.flags import benchmark_parser
    base = ["--data", str(synthetic_coco)]
    cfg = config_from_args(benchmark_parser().parse_args(base))
    assert (cfg.run.batch_invariant, cfg.model.trust_pickle) == ("auto", False)
    cfg = config_from_args(benchmark_parser().parse_args(base + ["--batch-invariant", "off", "--trust-pickle"]))
    assert (cfg.run.batch_invariant, cfg.model.trust_pickle) == ("off", True)
    with pytest.raises(SystemExit):
        benchmark_parser().parse_args(base + ["--batch-invariant", "maybe"])


def test_batches_are_pinned_for_a_cuda_backend_only(synthetic_coco, fast_conf, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from harness.run import benchmark as runner
    from harness.run.dataset import open_dataset, pin_memory_for
    from harness.settings.config import load_config
    from harness.sut.per_image import GuardedBackend
    cuda = SimpleNamespace(device=torch.device("cuda", 0), sizes=(SIZE,))
    assert pin_memory_for(cuda) and pin_memory_for(GuardedBackend(cuda))
    assert not pin_memory_for(SimpleNamespace(device=torch.device("cpu"))) and not pin_memory_for(object())
    config = load_config(None, {"data": {"data_dir": str(synthetic_coco), "cache_dir": str(tmp_path / "cache")},
                                "run": {"user_conf": str(fast_conf), "output_dir": str(tmp_path / "out")}})
    assert open_dataset(config.data, (SIZE,), progress=False).qsl.pin_memory is False
    assert open_dataset(config.data, (SIZE,), progress=False, pin_memory=True).qsl.pin_memory is True

    class Opened(Exception):
        pass

    def fake_open(data, sizes, pin_memory=False, **kw):
        raise Opened(pin_memory)
    monkeypatch.setattr(runner, "open_dataset", fake_open)
    monkeypatch.chdir(tmp_path)
    for backend, pinned in ((cuda, True), (NullBackend(config.model), False)):
        with pytest.raises(Opened) as opened:
            runner.run_benchmark(config, backend=backend)
        assert opened.value.args == (pinned,)
