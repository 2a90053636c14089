"""The backend a run uses, loaded and warmed up before anything is timed.

Warm-up is where torch.compile compiles and CUDA graphs are captured, so it
must see every batch shape the run will give the network: a shape first seen
during a run runs eagerly (backends/pytorch/cuda_graphs.py). The shapes follow from
how each SUT forms batches (harness/sut/): Offline cuts its query into full
``batch_size`` batches and one remainder, Server batches take any size up to
``server_max_batch``, a MultiStream query is one batch of
``multistream_samples``, SingleStream one sample; a batch that fails is
retried one sample at a time, so 1 is always warmed up.

The Offline remainder depends on the query's size, which LoadGen fixes before
the run (mlcommons/inference loadgen/test_settings_internal.cc, checked
against LoadGen 6.0.17 in tests/test_warmup_sizes.py):

- performance (and TEST01): ``max(min_query_count, floor(1.1 x min_duration_s x expected_qps))``;
- TEST04 (``performance_issue_same``): ``performance_sample_count`` samples;
- accuracy: one query per loaded set of ``performance_sample_count`` samples,
  the last set holding the rest of the data set.

``performance_sample_count`` is user.conf's override or the QSL's (64 or the
data set when smaller); without the data set the accuracy run's last set is
unknown and its remainder, if new, runs eagerly (untimed).

``--executor ray`` puts the workers on Ray actors (backends/ray/). The driver reads and checks the
checkpoint once (a bad file stops the run here, exit status 2) and ships its weights through Ray's
object store; each worker builds its backend from a :class:`~backends.factory.BackendSpec` that
:func:`backend_spec` works out here (the worker reads neither user.conf nor the data set and imports
only ``backends`` and ``ground``), with the same code as a local run (per-image execution on a CPU,
the warm-up of the run's batch sizes), so a worker's detections are byte for byte the local ones.
A call that takes longer than :func:`call_deadline_s` loses its worker (its batch goes to another):
Server 10 x the latency bound, at least 5 s (a batch a few times over the bound is slow, not lost;
one 10 times over it holds samples that already failed); other scenarios 600 s, which no healthy
device needs for one batch; ``--ray-call-timeout`` overrides both.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Sequence

from backends.factory import BackendSpec, build_worker
from backends.factory import build_backend as factory_build
from harness.settings.config import Config
from ground.errors import ConfigError
from harness.sut.per_image import GuardedBackend

log = logging.getLogger("harness")


def loadgen_offline_samples(min_duration_ms: int, min_query_count: int, expected_qps: float) -> int:
    """Samples in LoadGen's Offline performance query: its 1.1 slack on duration x rate, at least the minimum."""
    return max(int(min_query_count), int(1.1 * (min_duration_ms / 1000.0) * expected_qps))


def offline_query_sizes(config: Config, total_count: int | None = None, perf_count: int | None = None
                        ) -> tuple[int, ...]:
    """Sizes of the Offline queries LoadGen will issue in the runs of ``config.run.mode``.

    ``total_count`` and ``perf_count`` are the data set's (``perf_count``: the QSL's own, which
    user.conf's override replaces); without them the accuracy run's sizes are partly unknown.
    """
    from harness.settings.loadgen import make_test_settings
    from qsl.coco_qsl import DEFAULT_PERF_COUNT
    run = config.run
    settings = make_test_settings(run.user_conf, "Offline", "performance", run)
    if perf_count is None and total_count is not None:
        perf_count = min(total_count, DEFAULT_PERF_COUNT)
    perf = int(settings.performance_sample_count_override) or perf_count
    sizes = []
    if run.mode in ("performance", "submission"):
        sizes.append(loadgen_offline_samples(settings.min_duration_ms, settings.min_query_count,
                                             settings.offline_expected_qps))
    if run.mode == "submission" and perf:
        sizes.append(perf)                                       # TEST04
    if run.mode in ("accuracy", "submission") and perf:
        sizes.append(perf)
        if total_count is not None and total_count % perf:
            sizes.append(total_count % perf)
    return tuple(sorted(set(sizes), reverse=True))


def warmup_batch_sizes(config: Config, every_size: bool, offline_queries: Sequence[int] = ()) -> tuple[int, ...]:
    """The batch sizes to warm up for a run of ``config.run.scenario``, largest first.

    The largest batch of the run is Offline ``batch_size``, Server ``server_max_batch``, MultiStream
    ``multistream_samples``, SingleStream 1. ``every_size`` (CUDA graphs: one capture per batch
    shape) asks for every shape the run can give the network: Offline the full batch and the
    remainder of each of ``offline_queries`` (every size up to the batch when none are given),
    Server every size up to its largest, MultiStream its query, always 1. Otherwise the largest, 2
    and 1 (torch.compile specializes 1 and makes one dynamic-shape graph from the second size it sees).
    """
    run = config.run
    largest = {"Offline": run.batch_size, "Server": run.server_max_batch,
               "MultiStream": run.multistream_samples, "SingleStream": 1}[run.scenario]
    if not every_size:
        sizes = {largest, min(2, largest), 1}
    elif run.scenario == "Offline" and offline_queries:
        sizes = {1} | {q % largest for q in offline_queries if q % largest}
        sizes |= {largest} if max(offline_queries) >= largest else set()
    elif run.scenario == "Offline" or run.scenario == "Server":
        sizes = set(range(1, largest + 1))
    else:
        sizes = {largest, 1}
    return tuple(sorted(sizes, reverse=True))


def backend_spec(config: Config, kind: str, dataset: Any = None, sim: Any = None) -> BackendSpec:
    """Everything needed to build ``config``'s backend of ``kind``, worked out here (``backends/factory.py``).

    The warm-up sizes follow the scenario (:func:`warmup_batch_sizes`); with CUDA graphs, Offline's
    remainders come from :func:`offline_query_sizes` (user.conf, ``dataset``'s counts when given), so
    a Ray worker reads neither user.conf nor the data set.
    """
    queries: tuple[int, ...] = ()
    if kind == "pytorch" and config.model.cuda_graphs and config.run.scenario == "Offline":
        qsl = getattr(dataset, "qsl", None)
        queries = offline_query_sizes(config, getattr(qsl, "total_count", None), getattr(qsl, "perf_count", None))
    return BackendSpec(kind, config.model, config.run.batch_invariant, warmup_batch_sizes(config, False),
                       warmup_batch_sizes(config, True, queries), sim)


def build_backend(config: Config, per_image: bool | None = None, dataset: Any = None,
                  weights: Any = None) -> Any:
    """The PyTorch backend for ``config``, loaded and warmed up for the run's batch sizes.

    The warm-up runs the batch shapes of the scenario (:func:`backend_spec`), so torch.compile and
    CUDA graph capture happen here, never inside a timed run. ``per_image`` runs each image of a
    batch on its own so that its response bytes do not depend on the batch (see
    harness/sut/per_image.py); when not given, ``config.run.batch_invariant`` decides ("auto" = on
    for a CPU). ``weights``: the checkpoint already read (``read_weights``), instead of reading
    ``config.model.checkpoint``.
    """
    if not config.model.checkpoint and not config.model.random_weights and weights is None:
        raise ConfigError("model.checkpoint is not set: give a checkpoint, or set model.random_weights to run on "
                          "untrained weights (speed measurements only)")
    spec = backend_spec(config, "pytorch", dataset)
    if per_image is not None:
        spec = dataclasses.replace(spec, batch_invariant="on" if per_image else "off")
    backend, one_by_one = factory_build(spec, config.run.device, config.run.threads, weights)
    return GuardedBackend(backend, per_image=True) if one_by_one else backend


def make_backend(config: Config, kind: str, sim: Any = None, weights: Any = None):
    """The backend named by --backend, loaded and warmed up; with ``--executor ray``, its workers on Ray.

    ``sim``: the devices of ``kind`` "simulated" (``backends.simulated.profiles.SimSettings``; default one device
    of the default profile). ``weights``: the checkpoint already read (a Ray worker gets it from the driver).
    """
    if config.run.executor == "ray":
        return make_ray_backend(config, kind, sim)
    if kind == "null":
        from backends.null import NullBackend
        return NullBackend(config.model)
    if kind == "simulated":
        from backends.simulated.profiles import DEFAULT_PROFILE, PROFILES, SimSettings
        from backends.simulated.backend import SimulatedBackend
        sim = sim or SimSettings(PROFILES[DEFAULT_PROFILE])
        derived_for = sim.timing.sizes
        if derived_for is not None and tuple(config.model.sizes) != tuple(derived_for):
            log.warning("the simulated profile %s times SSD-ResNet34 at %s, but the images are prepared at %s: "
                        "the device time stays the profile's, only the host's gather changes",
                        sim.timing.source, "+".join(map(str, derived_for)),
                        "+".join(map(str, config.model.sizes)))
        return SimulatedBackend(config.model, sim)
    return build_backend(config, weights=weights)


def close_backend(backend: Any) -> None:
    """Release what ``backend`` holds beyond this process (Ray's workers); nothing for a local one."""
    close = getattr(backend, "close", None)
    if callable(close):
        close()


def call_deadline_s(config: Config) -> float:
    """Seconds one batch may take on a Ray worker before the worker counts as lost (harness/sut/factory.py)."""
    from harness.settings.loadgen import make_test_settings
    from harness.sut.factory import call_deadline_s as deadline_s
    run = config.run
    bound_s = 0.0
    if run.scenario == "Server" and run.ray_call_timeout_s is None:
        bound_s = make_test_settings(run.user_conf, "Server", "performance", run).server_target_latency_ns / 1e9
    return deadline_s(run, bound_s)


def make_ray_backend(config: Config, kind: str, sim: Any = None) -> Any:
    """The backend of ``kind`` (--backend) with its workers on the Ray cluster of ``config.run``.

    Simulated devices: one per Ray worker, ``sim.devices`` of them unless ``--ray-workers`` says otherwise.
    """
    from backends.ray.backend import RayBackend
    weights = None
    if kind == "pytorch":
        from backends.pytorch.backend import read_weights
        weights = read_weights(config.model)
    run = config.run
    workers = run.ray_workers
    if kind == "simulated" and workers is None and sim is not None:
        workers = sim.devices
    # The checkpoint path stays here (the worker's node need not have the file); a simulated worker is one device.
    model = dataclasses.replace(config.model, checkpoint=None)
    spec = dataclasses.replace(backend_spec(config, kind), model=model,
                               sim=dataclasses.replace(sim, devices=1) if sim is not None else None)
    return RayBackend.start(functools.partial(build_worker, spec), address=run.ray_address, device=run.device,
                            workers=workers, threads=run.threads, weights=weights, deadline_s=call_deadline_s(config))
