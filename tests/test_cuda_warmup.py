"""The CUDA warm-up's rules on the CPU, with a stand-in for ``torch.cuda`` (tests/fake_cuda.py): graph memory
measured on the largest batch and a capture out of memory turned into the designed error
(backends/pytorch/warmup.py), the capture-order rule of graph outputs (cuda_graphs.py), the host slot's copy
event (transfer.py), compiles per device and eager fallbacks (network.py), twins and the state dict."""
from __future__ import annotations

import gc
import logging
import re
import weakref

import pytest
import torch

from backends.pytorch import network
from backends.pytorch.cuda_graphs import GraphedForward
from backends.pytorch.graph_memory import GraphMemoryError, estimate
from backends.pytorch.transfer import StagedImages, predict_on_stream
from ground.errors import InputError
from tests.fake_cuda import FakeCuda
from tests.test_perf_paths import INDUCTOR
from tests.tiny_models import SIZE, tiny_backend, tiny_inputs

SIZES = (3, 2, 1)


def _graphed(times_estimate, free):
    """A tiny CPU backend whose network is captured on the stand-in: each capture really costs ``times_estimate``
    x what it adds to the estimate (graphs share a pool); the device has ``free(plan, largest batch)`` bytes free
    (both estimates)."""
    from backends.pytorch import cuda_graphs
    backend = tiny_backend()
    plan, passes = backend.graph_memory(SIZES)
    fake = FakeCuda(free=int(free(plan.total, estimate(passes, SIZES[:1]).total)))
    captured = []

    def network(x, mask):                                   # one pass (the tiny model is single-scale)
        if fake.capturing:
            grown = estimate(passes, captured + [x.shape[0]]).total - (estimate(passes, captured).total
                                                                      if captured else 0)
            fake.charge(int(times_estimate * grown))
            captured.append(x.shape[0])
        return backend.model(x, mask)
    backend.detector.model = GraphedForward(network, eager=backend.model, cuda=fake)
    backend.cuda_api = fake
    cuda_graphs.WARMUP_RUNS, saved = 0, cuda_graphs.WARMUP_RUNS
    return backend, fake, plan, passes, saved


def _largest(msg):
    return re.search(r"the largest batch that fits: (?:at most )?(\d+)", msg)


def test_graphs_costing_more_than_estimated_are_refused_after_the_largest_batch():
    from backends.pytorch import cuda_graphs
    # batch 3 alone fits at 3 x its estimate, but not everything: the rest is refused before its capture
    backend, fake, plan, passes, saved = _graphed(3, lambda whole, largest: 1.5 * whole + 1.5 * largest)
    try:
        with pytest.raises(GraphMemoryError) as err:        # the estimate fits; the measured cost does not
            backend.warmup(SIZES)
    finally:
        cuda_graphs.WARMUP_RUNS = saved
    msg = str(err.value)
    assert isinstance(err.value, InputError)                # run.py: one line, exit status 2
    assert backend.detector.model.shapes == [(3, 3, SIZE, SIZE)] and len(fake.captures) == 1   # no more captures
    assert "the estimate x 3.00, measured on batch 3" in msg and "--no-cuda-graphs" in msg
    fits = int(_largest(msg).group(1))
    free = fake.total
    assert plan.total <= free < 3 * plan.total
    assert 3 * estimate(passes, [min(s, fits) for s in SIZES]).total <= free
    assert 3 * estimate(passes, [min(s, fits + 1) for s in SIZES]).total > free


def test_a_capture_out_of_memory_becomes_the_error_naming_a_batch():
    from backends.pytorch import cuda_graphs
    backend, fake, plan, passes, saved = _graphed(2, lambda whole, largest: whole)
    try:
        with pytest.raises(GraphMemoryError) as err:        # the first capture already runs out
            backend.warmup(SIZES)
    finally:
        cuda_graphs.WARMUP_RUNS = saved
    msg = str(err.value)
    assert isinstance(err.value, InputError) and isinstance(err.value.__cause__, torch.OutOfMemoryError)
    assert "capturing the CUDA graphs of batch 3 on cpu ran out of device memory" in msg
    assert 1 <= int(_largest(msg).group(1)) < 3 and "--batch-size" in msg


def test_graphs_within_the_measured_cost_are_all_captured():
    from backends.pytorch import cuda_graphs
    backend, fake, plan, passes, saved = _graphed(1.2, lambda whole, largest: 1.5 * whole)
    try:
        backend.warmup(SIZES)
    finally:
        cuda_graphs.WARMUP_RUNS = saved
    assert backend.detector.model.shapes == [(b, 3, SIZE, SIZE) for b in SIZES]


def test_graph_outputs_are_replayed_in_capture_order_within_a_batch():
    fake = FakeCuda()
    runner = GraphedForward(lambda x, mask: (x * 2, x * 3), cuda=fake)
    small, large = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)
    with runner.capture_window():
        runner(large, [1])                                  # the second pass's graph captured first
        runner(small, [1])
    with runner.one_batch():
        runner(large, [1])
        runner(small, [1])                                  # captured after: its scratch spares large's outputs
    with runner.one_batch():
        runner(small, [1])
        with pytest.raises(RuntimeError, match="not captured after every graph"):
            runner(large, [1])                              # captured before: may overwrite small's outputs
    runner(small, [1])
    runner(large, [1])                                      # outside a batch nothing is kept: no rule


def test_the_host_slot_is_released_only_after_its_copy_even_with_an_asynchronous_copy_back():
    fake = FakeCuda()
    stream = fake.Stream()
    images, hw = tiny_inputs()
    staged = StagedImages(images)
    staged.ready = fake.Event()
    order = []

    def to_device(imgs):
        order.append("copy in")
        return dict(imgs)

    def detect(inputs, image_hw):
        order.append("detect")
        return [torch.zeros(2, 6), torch.zeros(0, 6)]

    def copy_back_async(t):                                 # returns before the copy is done
        order.append("copy back")
        return t
    out = predict_on_stream(fake, stream, torch.device("cpu"), staged, hw, to_device, detect, copy_back_async)
    events = [e for what, e in fake.log if what == "record"]
    assert fake.log[0] == ("wait", staged.ready) and len(events) == 1
    assert fake.log[-1] == ("synchronize", events[0])       # the last thing before the slot goes back
    assert order == ["copy in", "detect", "copy back"] and [d.shape[0] for d in out] == [2, 0]


def test_a_twin_never_holds_the_checkpoints_state_dict():
    backend = tiny_backend()
    state = {k: v.clone() for k, v in backend.model.state_dict().items()}
    probe = weakref.ref(next(iter(state.values())))
    backend.weights = (state, {})                           # as during load, before the twins are made
    backend.cuda_api = FakeCuda()
    twin = backend._twin()
    backend.weights = None                                  # what load does at its end
    del state
    gc.collect()
    assert probe() is None and twin.weights is None


@pytest.mark.parametrize("compile_backend", ["eager", pytest.param("inductor", marks=INDUCTOR)])
def test_compiles_once_per_input_size_with_a_dynamic_batch(compile_backend, monkeypatch, caplog):
    monkeypatch.setattr(network, "COMPILE_BACKEND", compile_backend)
    torch._dynamo.reset()
    backend = tiny_backend(compile=True)
    before = network.COMPILES["cpu"]
    with caplog.at_level(logging.WARNING):
        backend.warmup((3, 1))
        backend.predict(*tiny_inputs())                     # a batch of 2: the dynamic variant, no compile
    assert network.COMPILES["cpu"] - before == 2             # any batch of 2 or more, and a batch of 1
    assert not [r for r in caplog.records if "could not be compiled" in r.message]


def test_a_frame_that_falls_back_to_eager_is_logged(monkeypatch, caplog):
    if not network._isolated(1):
        pytest.skip("this torch.compile has no per-call recompile limit")
    monkeypatch.setattr(network, "COMPILE_BACKEND", "eager")
    monkeypatch.setattr(network, "VARIANTS_PER_PASS", 1)      # room for one variant: the batch of 1 is a second
    torch._dynamo.reset()
    backend = tiny_backend(compile=True)
    with caplog.at_level(logging.WARNING):
        backend.warmup((2, 1))
    warned = [r.message for r in caplog.records if "could not be compiled" in r.message]
    assert len(warned) == 1 and "1 frame(s) of the network on cpu" in warned[0]
