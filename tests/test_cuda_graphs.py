"""CUDA-graph scheduling on the CPU, with a stand-in for ``torch.cuda``: when shapes are captured, on which
stream and pool, and what runs eagerly (backends/pytorch/cuda_graphs.py); graph memory and its up-front refusal
(backends/pytorch/graph_memory.py); torch.compile's worker rule (backends/pytorch/network.py)."""
from __future__ import annotations

import logging
import threading

import pytest
import torch

from backends.model_config import ModelConfig
from backends.pytorch.cuda_graphs import GraphedForward
from backends.pytorch.graph_memory import (
    GIB,
    GraphMemoryError,
    PassMemory,
    check_fits,
    estimate,
    model_passes,
)
from backends.pytorch.network import compile_refusal, configure_cuda_math
from backends.ssd.model import SSDResNet
from ground.errors import InputError
from tests.fake_cuda import FakeCuda
from tests.tiny_models import SIZE, tiny_backend, tiny_inputs


class Net:
    """Stands in for the network: counts calls, returns outputs shaped like (locs, confs)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, mask):
        self.calls += 1
        return x.sum((1, 2, 3))[:, None, None].expand(-1, 4, 2), x.mean((1, 2, 3))[:, None, None].expand(-1, 5, 2)


def _x(b, s=8):
    return torch.rand(b, 3, s, s).contiguous(memory_format=torch.channels_last)


def test_shapes_are_captured_only_in_the_warmup_window_and_new_ones_run_eagerly(caplog):
    fake, model, eager = FakeCuda(), Net(), Net()
    runner = GraphedForward(model, eager=eager, cuda=fake)
    with runner.capture_window():
        for b in (4, 3, 1):
            runner(_x(b), [1, 1])
    assert runner.shapes == [(4, 3, 8, 8), (3, 3, 8, 8), (1, 3, 8, 8)] and len(fake.captures) == 3
    captured_calls = model.calls
    runner(_x(3), [1, 1])                                      # captured: a replay, the network is not called
    assert model.calls == captured_calls and eager.calls == 0
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            locs, confs = runner(_x(2), [1, 1])               # the run meets a batch of 2: eager, never captured
    assert locs.shape == (2, 4, 2) and eager.calls == 3 and len(fake.captures) == 3
    assert runner.eager_calls == {(2, 3, 8, 8): 3}
    assert sum("runs eagerly" in r.message for r in caplog.records) == 1      # said once per shape
    assert model.calls == captured_calls                      # the compiled module is never run mid-run


def test_one_capture_stream_and_one_pool_per_worker():
    fake = FakeCuda()
    workers = [GraphedForward(Net(), cuda=fake) for _ in range(2)]
    for w in workers:
        with w.capture_window():
            for b in (8, 5, 1):
                for size in (8, 16):                           # two passes per batch, as the two-scale model
                    w(_x(b, size), [1, 1])
    assert len(fake.captures) == 12 and len(fake.streams) == 2 and len(fake.pools) == 2
    for i in range(2):                                        # each worker: all its captures on one stream/pool
        mine = fake.captures[6 * i:6 * (i + 1)]
        assert {id(p) for p, _ in mine} == {id(fake.pools[i])} and {s.name for _, s in mine} == {f"side{i}"}
    assert fake.capture_threads == {threading.get_ident()}
    assert fake.capture_modes == ["thread_local"] * 12          # other threads may use CUDA meanwhile


def test_graphs_of_one_input_size_share_one_input_buffer():
    runner = GraphedForward(Net(), cuda=FakeCuda())
    with runner.capture_window():
        for b in (8, 3):
            runner(_x(b), [1])
    big, small = (entry[1] for entry in runner._graphs.values())
    assert big.data_ptr() == small.data_ptr() and small.shape[0] == 3
    assert small.is_contiguous(memory_format=torch.channels_last)


def test_backend_warmup_opens_the_window_largest_batch_first_and_a_run_never_captures(monkeypatch):
    """The backend's own warm-up (tiny model, CPU) with its network wrapped in a graph runner on the stand-in."""
    from backends.pytorch import cuda_graphs
    monkeypatch.setattr(cuda_graphs, "WARMUP_RUNS", 0)          # the stand-in needs no cuDNN warm-up
    backend = tiny_backend()
    fake = FakeCuda()
    backend.detector.model = GraphedForward(backend.model, cuda=fake)
    backend.cuda_api = fake
    backend.warmup((1, 2))
    assert backend.detector.model.shapes == [(2, 3, SIZE, SIZE), (1, 3, SIZE, SIZE)]     # largest first
    images, hw = tiny_inputs()
    backend.predict(images, hw)                                # batch of 2: replayed
    backend.predict({SIZE: torch.cat([images[SIZE]] * 2)[:3]}, torch.cat([hw] * 2)[:3])   # batch of 3: eager
    assert len(fake.captures) == 2 and backend.detector.model.eager_calls == {(3, 3, SIZE, SIZE): 1}


# -- graph memory ------------------------------------------------------------------------------------

def test_estimate_arithmetic():
    # per image: pass A input 10, outputs 4, peak 30; pass B input 40, outputs 16, peak 100
    passes = [PassMemory(300, 10, 4, 30), PassMemory(600, 40, 16, 100)]
    mem = estimate(passes, [8, 3, 1])
    assert mem.batch_sizes == (8, 3, 1)
    assert mem.inputs == 8 * 10 + 8 * 40                        # one buffer per input size, the largest batch
    assert mem.outputs == (8 + 3 + 1) * (4 + 16)                # every graph's outputs stay live
    assert mem.transient == 8 * (100 - 16)                      # one graph's scratch at a time
    assert mem.total == 400 + 240 + 672
    assert mem.unshared == (8 + 3 + 1) * (30 + 10 + 100 + 40)   # a stream per capture: nothing reused


def test_refusal_names_the_figures_and_the_largest_batch_that_fits():
    passes = [PassMemory(700, GIB // 100, GIB // 50, GIB // 10)]
    mem = estimate(passes, [32, 27, 1])
    check_fits(mem, 2, 2 * mem.total, "cuda:0", passes)        # fits exactly: no error
    with pytest.raises(GraphMemoryError) as err:
        check_fits(mem, 2, 4 * GIB, "cuda:0", passes)
    msg = str(err.value)
    assert isinstance(err.value, InputError)                   # run.py: one line, exit status 2
    assert f"{mem.total / GIB:.1f} GiB per worker" in msg and f"{2 * mem.total / GIB:.1f} GiB for the 2" in msg
    assert "cuda:0, which has 4.0 GiB free" in msg and "--batch-size" in msg and "--no-cuda-graphs" in msg
    fits = int(msg.split("the largest batch that fits: ")[1].split(")")[0])
    assert 2 * estimate(passes, [min(s, fits) for s in (32, 27, 1)]).total <= 4 * GIB
    assert 2 * estimate(passes, [min(s, fits + 1) for s in (32, 27, 1)]).total > 4 * GIB


def test_backend_refuses_graphs_that_cannot_fit_a_fake_device():
    backend = tiny_backend()
    mem, _ = backend.graph_memory((8, 1))
    assert backend.check_graph_memory((8, 1), free_bytes=mem.total) == mem
    with pytest.raises(GraphMemoryError, match="need about"):
        backend.check_graph_memory((8, 1), free_bytes=mem.total - 1)


def test_traced_pass_memory_matches_the_layer_arithmetic():
    """SSD-ResNet34 at 300, fp16, BatchNorm folded: the input, the outputs and the stem's two buffers."""
    from backends.pytorch.network import prepare_network
    with torch.device("meta"):
        model = SSDResNet(81, "resnet34").eval()
    prepare_network(model, "meta", torch.float16, channels_last=True)
    (p,) = model_passes(model, ModelConfig(image_size=(300, 300)), torch.float16)
    assert p.input_bytes == 3 * 300 * 300 * 2
    assert p.output_bytes == (4 + 81) * 8732 * 2                 # locs and confs of 8732 boxes, fp16
    stem = 64 * 150 * 150 * 2                                   # conv1's output, the largest activation
    assert stem < p.peak_bytes < 4 * stem + p.output_bytes


def test_estimate_for_700_1400_batch_32_offline_against_every_size():
    """The README's figures: Offline captures its batch, the remainder and 1, not every size up to 32."""
    from backends.pytorch.network import prepare_network
    with torch.device("meta"):
        model = SSDResNet(81, "resnet34").eval()
    prepare_network(model, "meta", torch.float16, channels_last=True)
    passes = model_passes(model, ModelConfig(image_size=(700, 1400), dboxes_scale=2.0), torch.float16)
    offline = estimate(passes, [32, 27, 1])
    every = estimate(passes, range(1, 33))
    assert offline.total < 10 * GIB < 60 * GIB < every.unshared
    assert offline.total < every.total < every.unshared


# -- torch.compile and CUDA math --------------------------------------------------------------------

def test_compile_with_several_workers_needs_graphs():
    cfg = ModelConfig(compile=True)
    assert compile_refusal(cfg, 1, graphs=False) is None                  # one compute thread
    assert compile_refusal(cfg, 2, graphs=True) is None                   # only graph replays in the threads
    assert "pytorch/pytorch#118260" in compile_refusal(cfg, 2, graphs=False)
    assert compile_refusal(ModelConfig(compile=False), 4, graphs=False) is None


def test_compiled_runner_per_worker_and_uncompiled_eager_fallback(monkeypatch):
    from backends.pytorch import network
    monkeypatch.setattr(network, "COMPILE_BACKEND", "eager")
    model = torch.nn.Identity()
    cuda = torch.device("cuda", 0)
    a, b = (network.network_runner(model, ModelConfig(compile=True), cuda) for _ in range(2))
    assert isinstance(a, GraphedForward) and a.model is not b.model        # one compiled module per worker
    assert a.eager is model and b.eager is model                         # no graph: the uncompiled network


def test_cuda_math_flags():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32
    try:
        configure_cuda_math()
        assert cudnn.benchmark is True                          # torch's default is False
        assert cudnn.allow_tf32 is False and matmul.allow_tf32 is False   # fp32 convolutions stay IEEE fp32
    finally:
        cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved
