"""The SUT for a scenario, sized from the run config and LoadGen's settings, and its workers' deadline.

The deadline is the longest one batch may take on a worker before the worker counts as lost (its
samples then go to the others): ``run.ray_call_timeout_s`` (``--call-timeout``) when set; else
Server 10 x the latency bound, at least 5 s (a batch a few times over the bound is slow, not lost;
one 10 times over it holds samples that already failed); else 600 s, which no healthy device needs
for one batch. Local workers get it from the pipeline (harness/sut/pipeline.py), Ray workers from
their proxies (backends/ray/proxy.py).
"""
from __future__ import annotations

from typing import Any

from harness.settings.config import Config, RunConfig
from harness.sut.base import BaseSUT
from harness.sut.offline import OfflineSUT
from harness.sut.server import ServerSUT
from harness.sut.stream import StreamSUT

SERVER_DEADLINE_FACTOR = 10      # x the Server latency bound
SERVER_DEADLINE_FLOOR_S = 5.0
DEADLINE_S = 600.0               # Offline, SingleStream, MultiStream


def call_deadline_s(run: RunConfig, server_bound_s: float) -> float:
    """Seconds one batch may take on a worker of a ``run.scenario`` run before the worker counts as lost.

    ``server_bound_s``: LoadGen's Server latency bound (``server_target_latency_ns`` / 1e9).
    """
    if run.ray_call_timeout_s is not None:
        return float(run.ray_call_timeout_s)
    if run.scenario != "Server":
        return DEADLINE_S
    return max(SERVER_DEADLINE_FACTOR * server_bound_s, SERVER_DEADLINE_FLOOR_S)


def make_sut(scenario: str, backend: Any, qsl: Any, config: Config, settings: Any) -> BaseSUT:
    """The SUT for ``scenario``, sized from the run config and LoadGen's settings."""
    run = config.run
    bound_s = settings.server_target_latency_ns / 1e9
    # Ray's proxies hold their calls to the same deadline themselves (and stop the actor past it).
    deadline_s = call_deadline_s(run, bound_s) if run.executor == "local" else None
    if scenario in ("SingleStream", "MultiStream"):
        return StreamSUT(backend, qsl, scenario, deadline_s=deadline_s)
    if scenario == "Offline":
        return OfflineSUT(backend, qsl, run.batch_size, deadline_s=deadline_s)
    if scenario == "Server":
        return ServerSUT(backend, qsl, run.server_max_batch, run.server_max_wait_ms / 1e3, bound_s=bound_s,
                         deadline_s=deadline_s)
    raise ValueError(f"unknown scenario {scenario!r}")
