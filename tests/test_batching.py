"""Server batching without LoadGen: the dynamic batcher, the measured service time, the latency budget."""
from __future__ import annotations

import time

import pytest

from harness.sut.batching import DynamicBatcher
from harness.sut.budget import LatencyBudget, ServiceTime
from harness.sut.completion import Sample
def test_dynamic_batcher_fills_or_times_out():
    b = DynamicBatcher(max_batch=3, max_wait_s=0.05)
    b.add([Sample(i, i) for i in range(4)])
    assert [s.id for s in b.next_batch().samples] == [0, 1, 2]              # full batch leaves at once
    t0 = time.monotonic()
    assert [s.id for s in b.next_batch().samples] == [3]                    # a lone sample waits max_wait_s
    assert time.monotonic() - t0 >= 0.04
    b.add([Sample(9, 9)])
    b.flush()
    t0 = time.monotonic()
    assert [s.id for s in b.next_batch().samples] == [9] and time.monotonic() - t0 < 0.04
    b.close()
    assert b.next_batch() is None


def test_service_time_fits_the_batch_cost_and_is_flat_with_one_size():
    st = ServiceTime()
    assert st.estimate(8) is None                                   # nothing measured yet
    for b in (1, 8, 4, 8, 2, 8):
        st.observe(b, 0.010 + 0.002 * b)                            # a 10 ms fixed part, 2 ms per sample
    assert st.estimate(16) == pytest.approx(0.010 + 0.002 * 16, abs=1e-6)
    one = ServiceTime()
    for _ in range(4):
        one.observe(4, 0.020)
    assert one.estimate(2) == pytest.approx(0.020) and one.estimate(8) == pytest.approx(0.020)
    one.observe(4, 0.500)                                           # one batch the host stalled ...
    for _ in range(20):
        one.observe(4, 0.020)
    assert one.estimate(4) < 0.025                                  # ... is soon forgotten


def test_latency_budget_sizes_and_waits_against_the_bound():
    budget = LatencyBudget(max_batch=32, max_wait_s=0.050, bound_s=0.100)   # plans with 90 ms
    assert budget.cap() == 32 and budget.wait_s(32) == pytest.approx(0.045)  # unmeasured: half the budget
    for b in (1, 8, 4, 8, 2, 8):
        budget.service.observe(b, 0.010 + 0.002 * b)
    # 2 x (10 + 2b) ms <= 90 ms: b <= 17; the oldest sample may wait until 90 - 44 ms, capped at 50 ms.
    assert budget.cap() == 17
    assert budget.wait_s(17) == pytest.approx(0.090 - 0.044, abs=1e-6)
    assert budget.wait_s(1) == pytest.approx(0.050)
    slow = LatencyBudget(max_batch=8, max_wait_s=0.005, bound_s=0.100)
    for b in (1, 2, 4):
        slow.service.observe(b, 0.030 + 0.005 * b)                  # 2 x (30 + 5b) ms <= 90 ms: b <= 3
    assert slow.cap() == 3 and slow.wait_s(3) == pytest.approx(0.005)   # 45 ms of room: the 5 ms configured
    slower = LatencyBudget(max_batch=8, max_wait_s=0.005, bound_s=0.100)
    for _ in range(3):
        slower.service.observe(1, 0.086)                            # not even a batch of 1 fits twice
    assert slower.cap() == 8                                        # so the largest: throughput drains the queue
    assert slower.wait_s(1) == pytest.approx(0.004)                 # the oldest may wait only what is left
    assert LatencyBudget(8, 0.005, None).cap() == 8                 # no bound: the configured values
