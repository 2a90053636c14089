"""The SUT for a scenario, sized from the run config and LoadGen's settings."""
from __future__ import annotations

from typing import Any

from harness.settings.config import Config
from harness.sut.base import BaseSUT
from harness.sut.offline import OfflineSUT
from harness.sut.server import ServerSUT
from harness.sut.stream import StreamSUT


def make_sut(scenario: str, backend: Any, qsl: Any, config: Config, settings: Any) -> BaseSUT:
    """The SUT for ``scenario``, sized from the run config and LoadGen's settings."""
    run = config.run
    if scenario in ("SingleStream", "MultiStream"):
        return StreamSUT(backend, qsl, scenario)
    if scenario == "Offline":
        return OfflineSUT(backend, qsl, run.batch_size)
    if scenario == "Server":
        return ServerSUT(backend, qsl, run.server_max_batch, run.server_max_wait_ms / 1e3,
                         bound_s=settings.server_target_latency_ns / 1e9)
    raise ValueError(f"unknown scenario {scenario!r}")
