"""The backend a run uses, loaded and warmed up before anything is timed."""
from __future__ import annotations

import logging
from typing import Any

from harness.settings.config import Config
from harness.sut.guard import GuardedBackend

log = logging.getLogger("harness")


def warmup_batch_sizes(config: Config, every_size: bool) -> tuple[int, ...]:
    """The batch sizes to warm up for a run of ``config.run.scenario``, largest first.

    The largest batch of the run is Offline ``batch_size``, Server ``server_max_batch``, MultiStream
    ``multistream_samples``, SingleStream 1; smaller ones occur too (a query's tail, a Server batch
    that did not fill). ``every_size`` (CUDA graphs: one capture per batch size) gives every size
    from the largest down to 1; otherwise the largest, 2 and 1 (torch.compile specializes 1 and
    makes one dynamic-shape graph from the second size it sees).
    """
    run = config.run
    largest = {"Offline": run.batch_size, "Server": run.server_max_batch,
               "MultiStream": run.multistream_samples, "SingleStream": 1}[run.scenario]
    if every_size:
        return tuple(range(largest, 0, -1))
    return tuple(sorted({largest, min(2, largest), 1}, reverse=True))


def build_backend(config: Config, per_image: bool | None = None) -> Any:
    """The PyTorch backend for ``config``, loaded and warmed up for the run's batch sizes.

    The warm-up runs the batch sizes of the scenario (:func:`warmup_batch_sizes`), so
    torch.compile and CUDA graph capture happen here, never inside a timed run. ``per_image``
    runs each image of a batch on its own so that its response bytes do not depend on the batch
    (see harness/sut/guard.py); when not given, ``config.run.batch_invariant`` decides
    ("auto" = on for a CPU).
    """
    from backends.pytorch_backend import PyTorchBackend
    backend = PyTorchBackend(config.model, device=config.run.device, threads=config.run.threads,
                             trust_pickle=config.model.trust_pickle)
    backend.load()
    on_cpu = str(getattr(backend, "device", "cpu")).startswith("cpu")
    if per_image is None:
        per_image = {"on": True, "off": False}.get(config.run.batch_invariant, on_cpu)
    # Per image, the network only ever sees batches of one.
    graphs = not on_cpu and config.model.cuda_graphs
    backend.warmup(batch_sizes=(1,) if per_image else warmup_batch_sizes(config, graphs))
    if per_image:
        return GuardedBackend(backend, per_image=True)
    return backend


def make_backend(config: Config, kind: str, sim: Any = None):
    """The backend named by --backend, loaded and warmed up.

    ``sim``: the devices of ``kind`` "simulated" (``backends.simulated.SimSettings``; default one device
    of the default profile).
    """
    if kind == "null":
        from backends.null import NullBackend
        return NullBackend(config.model)
    if kind == "simulated":
        from backends.sim_profiles import DEFAULT_PROFILE, PROFILES
        from backends.simulated import SimSettings, SimulatedBackend
        sim = sim or SimSettings(PROFILES[DEFAULT_PROFILE])
        derived_for = sim.timing.sizes
        if derived_for is not None and tuple(config.model.sizes) != tuple(derived_for):
            log.warning("the simulated profile %s times SSD-ResNet34 at %s, but the images are prepared at %s: "
                        "the device time stays the profile's, only the host's gather changes",
                        sim.timing.source, "+".join(map(str, derived_for)),
                        "+".join(map(str, config.model.sizes)))
        return SimulatedBackend(config.model, sim)
    return build_backend(config)
