"""A backend made of remote backends: one Ray actor per worker, driven through ``WorkerProxy``.

``RayBackend.start`` joins the cluster (or starts a local Ray), plans the workers (``cluster.py``),
puts the weights into the object store once, starts the actors pinned to their nodes, and waits for
each to build its backend: first until every process is up (placed, started, the project's code
imported; ``start_timeout_s``), then until every backend is built and has computed one image
through Ray (``build_timeout_s``). The
project's packages a worker needs (``backends`` and ``ground``) travel with the job (Ray's ``py_modules``, see
``cluster.code_env``), so nodes need the same Python packages installed (requirements.txt) but neither this
checkout nor the checkpoint. Anything that
goes wrong on the way is a :class:`~backends.ray.cluster.RayClusterError` naming the worker and its
node, and the actors started so far are stopped.

``workers()`` gives the pipeline one proxy per remote worker, so it drives them as it drives local
ones. ``predict`` itself (the stream scenarios, direct evaluation) uses one worker at a time, moving
on to the next when one is lost. ``close`` stops the actors and the Ray this process started.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import ray
import torch
from ray.exceptions import RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from backends.base import WorkerLost

from backends.ray.cluster import (
    Connection,
    RayClusterError,
    WORKER_PACKAGES,
    Slot,
    alive_nodes,
    check_versions,
    connect,
    plan_workers,
    software_versions,
)
from backends.ray.proxy import ActorState, WorkerProxy, one_line
from backends.ray.worker import CONCURRENCY_GROUPS, BackendFactory, WorkerActor

log = logging.getLogger(__name__)

START_TIMEOUT_S = 180.0    # placement, process start and imports of one actor
BUILD_TIMEOUT_S = 1800.0   # building and warming up its backend (torch.compile, CUDA graphs) included


def _where(i: int, slot: Slot) -> str:
    return f"worker {i} on {slot.node}"


class RayBackend:
    """The backend interface of ``backends/base.py`` over remote workers; made by :meth:`start`."""

    def __init__(self, connection: Connection, states: list[ActorState], proxies: list[WorkerProxy],
                 nodes: int) -> None:
        self.connection = connection
        self.states = states
        self.proxies = proxies
        first = proxies[0]
        self.name = f"{first.name} on Ray, {len(proxies)} workers on {nodes} node{'s' if nodes > 1 else ''}"
        self.sizes = first.sizes
        self.simulated = first.simulated
        self.num_classes = first.num_classes
        self.device = "cpu"          # batches stay on this host until they are sent
        self._next = 0

    @classmethod
    def start(cls, factory: BackendFactory, *, address: str | None = None, device: str = "auto",
              workers: int | None = None, threads: int = 0, weights: Any = None, deadline_s: float = 600.0,
              packages: Sequence[str] = WORKER_PACKAGES, start_timeout_s: float = START_TIMEOUT_S,
              build_timeout_s: float = BUILD_TIMEOUT_S) -> "RayBackend":
        """Start the workers and return the backend once every one has built its backend.

        Args:
            factory: picklable ``(device, threads, weights) -> backend``, called on each worker.
            address: a running cluster's head ("host:port" or "auto"); None = a local Ray for this run.
            device, workers, threads: see :func:`~backends.ray.cluster.plan_workers`.
            weights: what ``factory`` needs besides the device (the checkpoint's state dict), shipped once.
            deadline_s: the most one batch may take on a worker before it counts as lost.
            packages: the project's top-level packages the workers import, shipped with them.
        """
        connection = connect(address, packages)
        where = f"the Ray cluster at {address}" if address else "the local Ray"
        states: list[ActorState] = []
        try:
            nodes = alive_nodes()
            slots = plan_workers(nodes, device, workers, threads, where)
            weights_ref = ray.put(weights) if weights is not None else None
            remote = ray.remote(concurrency_groups=CONCURRENCY_GROUPS, max_restarts=0,
                                max_task_retries=0)(WorkerActor)
            for i, slot in enumerate(slots):
                actor = remote.options(num_cpus=slot.num_cpus, num_gpus=1 if slot.gpu else 0,
                                       scheduling_strategy=NodeAffinitySchedulingStrategy(slot.node.node_id,
                                                                                         soft=False)).remote()
                states.append(ActorState(actor, _where(i, slot), slot.node.node_id))
            pings = _wait(states, [s.actor.ping.options(concurrency_group="control").remote() for s in states],
                          start_timeout_s, "start (placed on its node, process up, code imported)")
            driver = software_versions()
            for state, ping in zip(states, pings):   # before anything is built with them
                check_versions(driver, ping["versions"], state.where)
                state.pid = ping["pid"]
            infos = _wait(states, [s.actor.start.options(concurrency_group="control").remote(
                factory, slot.device, slot.threads, weights_ref) for s, slot in zip(states, slots)],
                build_timeout_s, "build its backend")
            del weights_ref   # built: the workers hold their copies
            proxies = [WorkerProxy(state, j, info, deadline_s) for state, info in zip(states, infos)
                       for j in range(info["workers"])]
            # One image through every worker's path (its thread, the transfers), so no timed batch pays for that.
            sizes = proxies[0].sizes
            one = ({s: torch.zeros(1, 3, s, s, dtype=torch.uint8) for s in sizes}, torch.tensor([[sizes[0]] * 2]))
            _wait([p.state for p in proxies], [p._send(*one) for p in proxies], build_timeout_s,
                  "compute a first image")
            for state, slot, info in zip(states, slots, infos):
                log.info("%s: %s backend on %s, %g CPU%s, built in %.1f s (pid %d)", state.where, info["name"],
                         info["device"], slot.num_cpus, " + 1 GPU" if slot.gpu else "", info["build_s"],
                         info["pid"])
            return cls(connection, states, proxies, len({s.node for s in slots}))
        except BaseException:
            for state in states:
                state.lose("startup failed", kill=True)
            connection.close()
            raise

    def workers(self) -> list[WorkerProxy]:
        """One backend per remote worker, for the pipeline's compute threads."""
        return list(self.proxies)

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
            except WorkerLost:
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
        self.connection.close()


def _wait(states: list[ActorState], refs: list[Any], timeout_s: float, what: str) -> list[Any]:
    """Every ref's value; RayClusterError naming each worker that failed or did not ``what`` within ``timeout_s``."""
    _, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    values, errors = [], []
    for state, ref in zip(states, refs):
        if ref in pending:
            errors.append(f"{state.where} did not {what} within {timeout_s:g} s (are its resources taken? "
                          "see `ray status`)")
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
