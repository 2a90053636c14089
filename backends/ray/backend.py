"""A backend made of remote backends: one Ray actor per worker, driven through ``WorkerProxy``.

``RayBackend.start`` joins the cluster (or starts a local Ray), plans the workers and reserves them
all at once in a placement group (``placement.py``: SPREAD over the nodes, one clear error when the
resources are not free within ``placement_timeout_s``), puts the weights into the object store once,
and starts one actor per bundle, each building its backend in its constructor; it then waits until
every actor answers (``build_timeout_s``: process start, imports, build and warm-up) and has computed
one image through Ray. The project's packages a worker needs (``backends`` and ``ground``) travel
with the job (Ray's ``py_modules``, ``cluster.code_env``), so nodes need the same Python packages
installed (requirements.txt) but neither this checkout nor the checkpoint. Anything that goes wrong
on the way is a :class:`~backends.ray.cluster.RayClusterError` naming the worker and its node, and
what was started is stopped.

Actors restart when their process dies (``max_restarts``; the weights stay in the object store for
that) and never re-run a call (``max_task_retries=0``); ``proxy.py`` re-admits them between batches.

``shared_samples(qsl)`` wraps the run's QSL so each loaded sample set goes to the workers once and batches
send only rows of it (``samples.py``). ``workers()`` gives the pipeline one proxy per remote worker,
so it drives them as it drives local ones. ``predict`` itself (direct evaluation) uses one worker at
a time, moving on to the next when one is lost. ``close`` stops the actors, releases the placement
group and stops the Ray this process started.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import ray
import torch
from ray.exceptions import RayError, RayTaskError
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from backends.base import WorkerLost

from .cluster import WORKER_PACKAGES, Connection, RayClusterError, check_versions, connect, software_versions
from .placement import PLACEMENT_TIMEOUT_S, alive_nodes, bundle_nodes, plan_workers, release, reserve
from .proxy import ActorState, WorkerProxy, one_line, payload_bytes
from .samples import SharedSamples
from .worker import CONCURRENCY_GROUPS, BackendFactory, WorkerActor

log = logging.getLogger(__name__)

BUILD_TIMEOUT_S = 1800.0   # an actor's start and build (torch.compile, CUDA graphs), and a restart's
MAX_RESTARTS = 3           # restarts of one actor over the run before it counts as lost


class RayBackend:
    """The backend interface of ``backends/base.py`` over remote workers; made by :meth:`start`."""

    def __init__(self, connection: Connection, group: Any, states: list[ActorState], proxies: list[WorkerProxy],
                 nodes: int, weights_ref: Any) -> None:
        self.connection = connection
        self.group = group
        self.states = states
        self.proxies = proxies
        self.weights_ref = weights_ref   # kept while the actors live: a restarted one builds from it again
        first = proxies[0]
        self.name = f"{first.name} on Ray, {len(proxies)} workers on {nodes} node{'s' if nodes > 1 else ''}"
        self.sizes = first.sizes
        self.simulated = first.simulated
        self.num_classes = first.num_classes
        self.device = "cpu"          # batches stay on this host until they are sent
        self.sample_set: tuple[int, Any] | None = None   # (version, ObjectRef) every worker holds
        self._next = 0

    @classmethod
    def start(cls, factory: BackendFactory, *, address: str | None = None, device: str = "auto",
              workers: int | None = None, threads: int = 0, weights: Any = None, deadline_s: float = 600.0,
              packages: Sequence[str] = WORKER_PACKAGES, placement_timeout_s: float = PLACEMENT_TIMEOUT_S,
              build_timeout_s: float = BUILD_TIMEOUT_S, max_restarts: int = MAX_RESTARTS) -> "RayBackend":
        """Start the workers and return the backend once every one has built its backend.

        Args:
            factory: picklable ``(device, threads, weights) -> backend``, called in each actor's constructor.
            address: a running cluster's head ("host:port" or "auto"); None = a local Ray for this run.
            device, workers, threads: see :func:`~backends.ray.placement.plan_workers`.
            weights: what ``factory`` needs besides the device (the checkpoint's state dict), shipped once.
            deadline_s: the most one batch may take on a worker before it counts as lost.
            packages: the project's top-level packages the workers import, shipped with them.
            max_restarts: how often Ray restarts one actor whose process died.
        """
        connection = connect(address, packages)
        where = f"the Ray cluster at {address}" if address else "the local Ray"
        group, states = None, []
        try:
            slots = plan_workers(alive_nodes(), device, workers, threads, where)
            group = reserve(slots, placement_timeout_s, where)
            weights_ref = ray.put(weights) if weights is not None else None
            remote = ray.remote(concurrency_groups=CONCURRENCY_GROUPS, max_restarts=max_restarts,
                                max_task_retries=0)(WorkerActor)
            driver = software_versions()
            for i, (slot, node) in enumerate(zip(slots, bundle_nodes(group))):
                actor = remote.options(num_cpus=slot.num_cpus, num_gpus=1 if slot.gpu else 0,
                                       scheduling_strategy=PlacementGroupSchedulingStrategy(group, i)).remote(
                    factory, slot.device, slot.threads, weights_ref, driver)
                states.append(ActorState(actor, f"worker {i} on {node}", build_timeout_s))
            pings = _wait(states, [s.control("ping") for s in states], build_timeout_s, "build its backend")
            for state, ping in zip(states, pings):
                state.node_id, state.pid = ping["node_id"], ping["pid"]
                check_versions(driver, ping["versions"], state.where)
            proxies = [WorkerProxy(state, j, info, deadline_s) for state, info in zip(states, pings)
                       for j in range(info["workers"])]
            # One image through every worker's path (its thread, the transfers), so no timed batch pays for that.
            sizes = proxies[0].sizes
            one = ({s: torch.zeros(1, 3, s, s, dtype=torch.uint8) for s in sizes}, torch.tensor([[sizes[0]] * 2]))
            _wait([p.state for p in proxies], [p._send(*one) for p in proxies], build_timeout_s,
                  "compute a first image")
            for state, slot, info in zip(states, slots, pings):
                log.info("%s: %s backend on %s, %g CPU%s, built in %.1f s (pid %d)", state.where, info["name"],
                         info["device"], slot.num_cpus, " + 1 GPU" if slot.gpu else "", info["build_s"],
                         info["pid"])
            for proxy in proxies:
                proxy.sent_bytes = proxy.sent_batches = 0
            backend = cls(connection, group, states, proxies, len({s.node_id for s in states}), weights_ref)
            for state in states:   # a restarted actor is handed the set the others hold
                state.current_set = backend.current_set
            return backend
        except BaseException:
            for state in states:
                state.lose("startup failed", kill=True)
            if group is not None:
                release(group)
            connection.close()
            raise

    def workers(self) -> list[WorkerProxy]:
        """One backend per remote worker, for the pipeline's compute threads."""
        return list(self.proxies)

    def shared_samples(self, qsl: Any) -> SharedSamples:
        """``qsl`` as the workers see it: its loaded sets in the object store, batches as rows of them."""
        return SharedSamples(qsl, self.publish)

    def current_set(self) -> tuple[int, Any] | None:
        """(version, ObjectRef) of the sample set every worker holds; None before LoadGen loads one."""
        return self.sample_set

    def publish(self, version: int, ref: Any) -> None:
        """Hand sample set ``version`` (an ObjectRef) to every worker and wait until each holds it; a worker
        that cannot take it is lost, or gets it when it comes back from a restart."""
        self.sample_set = (version, ref)
        live = [s for s in self.states if s.lost is None and s.restarting is None]
        calls = [s.control("load_set", version, ref) for s in live]
        _, pending = ray.wait(calls, num_returns=len(calls), timeout=BUILD_TIMEOUT_S)
        for state, call in zip(live, calls):
            try:
                ray.get(call, timeout=0 if call in pending else None)
            except RayError as e:
                state.died(e)

    def payload_bytes(self) -> float:
        """The mean size of what one batch sent from this process so far (its rows or its images), in bytes."""
        return payload_bytes(self.proxies)

    def load(self) -> None:
        """Nothing: the workers built their backends in :meth:`start`."""

    def warmup(self) -> None:
        """Nothing: the workers warmed up their backends in :meth:`start`."""

    def predict(self, images: Mapping[int, torch.Tensor], image_hw: torch.Tensor) -> list[torch.Tensor]:
        """One batch on the next worker, moving on while workers turn out to be lost; WorkerLost when none is left."""
        n = len(self.proxies)
        for k in range(n):
            proxy = self.proxies[(self._next + k) % n]
            if proxy.lost_reason() is not None:
                continue
            try:
                out = proxy.predict(images, image_hw)
            except (WorkerLost, RuntimeError) as e:
                if not isinstance(e, WorkerLost) and proxy.state.restarting is None:
                    raise
                continue
            self._next = (self._next + k + 1) % n
            return out
        raise WorkerLost("every Ray worker is lost: " + "; ".join(sorted({p.lost_reason() or "" for p in self.proxies})))

    def lost(self) -> list[str]:
        """Why each lost worker was lost."""
        return [r for p in self.proxies if (r := p.lost_reason()) is not None]

    def close(self) -> None:
        """Stop the actors, and Ray itself when this backend started or joined it; safe to call twice."""
        for state in self.states:
            state.lose("the run ended", kill=True)
        release(self.group)
        self.weights_ref = self.sample_set = None
        self.connection.close()


def _wait(states: list[ActorState], refs: list[Any], timeout_s: float, what: str) -> list[Any]:
    """Every ref's value; RayClusterError naming each worker that failed or did not ``what`` within ``timeout_s``."""
    _, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    values, errors = [], []
    for state, ref in zip(states, refs):
        if ref in pending:
            errors.append(f"{state.where} did not {what} within {timeout_s:g} s")
            values.append(None)
            continue
        try:
            values.append(ray.get(ref))
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            errors.append(f"{state.where} could not {what}: "
                          + (f"{type(cause).__name__}: {cause}" if isinstance(cause, Exception) else one_line(e)))
            values.append(None)
        except RayError as e:
            errors.append(f"{state.where} could not {what}: {one_line(e)}")
            values.append(None)
    if errors:
        raise RayClusterError("; ".join(errors))
    return values
