"""Joining a Ray cluster (or starting a local one for the run) and planning where the workers go.

Assumptions, checked against Ray 2.60.0:
- ``ray.init(address)`` raises ``RuntimeError("Version mismatch: ...")`` when the cluster runs another
  Ray or Python version than this process (Python to the patch level by default).
- ``ray.init(address="local")`` starts a new local Ray whose processes end with this process, also
  when it is killed; without an address, ``ray.init()`` would join a Ray already started on this
  machine (it records the latest one in /tmp/ray), which a run without ``--ray-address`` must not do.
- Token authentication: a local Ray turns it on and writes ``~/.ray/auth_token``; ``ray start`` uses
  it when a token exists (or ``RAY_AUTH_MODE=token``); a process joining an address given explicitly
  sends the token only with ``RAY_AUTH_MODE=token`` in its environment, and otherwise fails to
  connect after retrying for about 25 s.
- ``ray.init`` replaces the process's SIGTERM handler with one that calls ``sys.exit(15)``, and Ray's
  core then installs its failure handler for SIGTERM (it aborts the process: exit status 134):
  :func:`connect` puts the process's own handler back, so SIGTERM ends a Ray run as it ends a local one.
- ``ray.nodes()`` lists each node's resources as declared by ``ray start`` ("CPU", "GPU").
- An actor's resource amounts above 1 must be whole numbers; fractions below 1 are allowed.

Every problem the user can fix (no cluster at the address, too few GPUs, differing versions) is a
:class:`RayClusterError`, an InputError: one line, exit status 2.
"""
from __future__ import annotations

import importlib
import logging
import math
import os
import platform
import signal
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ground.errors import InputError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0   # how long the head's port may take to accept a connection
WORKER_PACKAGES = ("backends", "ground")   # all a worker imports of this project (backends/factory.py)


class RayClusterError(InputError, RuntimeError):
    """The Ray cluster cannot run the workers asked for; the message says what is missing and what to do."""


@dataclass(frozen=True)
class Node:
    """One alive node of the cluster and what it declared to Ray."""

    node_id: str
    ip: str
    host: str
    cpus: float
    gpus: float

    def __str__(self) -> str:
        return f"node {self.ip} ({self.host})" if self.host and self.host != self.ip else f"node {self.ip}"


@dataclass(frozen=True)
class Slot:
    """Where one worker runs and what it reserves there."""

    node: Node
    gpu: bool          # reserves one whole GPU of the node
    num_cpus: float    # CPUs reserved on the node (a fraction below 1 when the node is shared)
    device: str        # the device the worker's backend uses: "cuda" (the one GPU Ray lets it see) or "cpu"
    threads: int       # torch CPU threads of the worker; 0 = torch's default


@dataclass
class Connection:
    """This process's connection to Ray; ``owned`` when it was made here, so ``close`` ends it."""

    address: str
    owned: bool

    def close(self) -> None:
        if self.owned:
            import ray
            ray.shutdown()
            self.owned = False


def check_reachable(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise RayClusterError unless something accepts connections at ``address`` ("host:port"; "auto" passes)."""
    if address == "auto":
        return
    if "://" in address:
        raise RayClusterError(f"--ray-address {address}: give the head node's address as host:port (`ray start "
                              "--head` prints it; port 6379 by default); Ray Client (ray://) is not supported")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RayClusterError(f"--ray-address {address}: expected host:port of the cluster's head, such as "
                              "10.0.0.1:6379, or auto for the cluster this machine belongs to")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        why = e.strerror or type(e).__name__.replace("Error", " error").lower()
        raise RayClusterError(f"--ray-address {address}: no Ray cluster answers there ({why}); start one with "
                              "`ray start --head --port 6379` on the head node, or leave out --ray-address to "
                              "start a local Ray for the run") from None


def code_env(packages: Sequence[str], working_dir: str) -> dict[str, Any]:
    """A Ray runtime environment that ships the project's top-level ``packages`` to every worker process.

    Ray uploads them once per job (a local directory is accepted only in ``ray.init``'s job-level
    environment) and every node unpacks them, so nodes need no checkout of the project.
    ``working_dir`` (an empty folder; Ray uploads it at ``ray.init``, after which it may go) is the
    workers' working directory: without one Ray puts the driver's working directory on every worker's
    path, and a worker on the driver's machine could import what a remote node cannot.
    """
    dirs = [str(Path(importlib.import_module(p).__file__).parent) for p in packages]
    return {"py_modules": dirs, "working_dir": working_dir, "excludes": ["__pycache__", "*.pyc"]}


def connect(address: str | None, packages: Sequence[str] = WORKER_PACKAGES) -> Connection:
    """Join the cluster at ``address``, or start a local Ray when it is None, shipping ``packages``.

    A process already connected (an embedding program, the tests) keeps its connection and its job's
    runtime environment, which must then make ``packages`` importable on the workers (:func:`code_env`).
    """
    import ray
    if address is not None:
        check_reachable(address)
    if ray.is_initialized():
        return Connection(address or "this process's Ray", owned=False)
    where = f"the Ray cluster at {address}" if address else "a local Ray"
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        # "local": a new Ray even when one runs on this machine already (ray.init() would join that one).
        with tempfile.TemporaryDirectory(prefix="ray-job-") as empty:
            ray.init(address=address or "local", include_dashboard=False if address is None else None,
                     logging_level=logging.WARNING, runtime_env=code_env(packages, empty))
    except RuntimeError as e:
        if "Version mismatch" in str(e):
            detail = " ".join(str(e).split())
            raise RayClusterError(f"{where} runs other versions than this process ({detail}); install the same "
                                  "Ray and Python on every node (requirements.txt pins ray)") from None
        raise
    except ConnectionError as e:
        hint = ""
        if address not in (None, "auto") and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            hint = ("; a cluster with token authentication also needs RAY_AUTH_MODE=token here, with the head's token "
                    "in ~/.ray/auth_token or RAY_AUTH_TOKEN (Ray sends no token to an address given explicitly "
                    "unless told to)")
        raise RayClusterError(f"cannot join {where}: {' '.join(str(e).split())}{hint}") from None
    except ray.exceptions.AuthenticationError as e:
        raise RayClusterError(f"{where} refused this process's authentication token ({str(e).splitlines()[0]}); "
                              "copy the head's token (`ray get-auth-token` on the head) to ~/.ray/auth_token "
                              "here, or set RAY_AUTH_TOKEN") from None
    finally:
        restore_sigterm(sigterm)
    return Connection(address or "local", owned=True)


def restore_sigterm(handler: Any) -> None:
    """Put back the SIGTERM handler ``ray.init`` replaced (only the main thread sets handlers; so does Ray)."""
    import threading
    if handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def alive_nodes() -> list[Node]:
    """The cluster's alive nodes, ordered by address."""
    import ray
    nodes = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        nodes.append(Node(n["NodeID"], n["NodeManagerAddress"], n.get("NodeManagerHostname", ""),
                          float(res.get("CPU", 0)), float(res.get("GPU", 0))))
    return sorted(nodes, key=lambda n: (n.ip, n.node_id))


def inventory(nodes: list[Node]) -> str:
    """'node 10.0.0.1 (a): 8 CPU, 2 GPU; node ...' for messages."""
    return "; ".join(f"{n}: {n.cpus:g} CPU, {n.gpus:g} GPU" for n in nodes) or "no alive node"


def _spread(count: int, capacity: dict[Node, float]) -> list[Node]:
    """``count`` nodes taken round-robin over ``capacity``'s nodes (in order), each at most its capacity."""
    left, picks = dict(capacity), []
    while len(picks) < count:
        for node in capacity:
            if len(picks) < count and left[node] >= 1:
                picks.append(node)
                left[node] -= 1
    return picks


def _share(cpus: float, k: int) -> float:
    """CPUs each of ``k`` workers reserves on a node with ``cpus``: whole numbers from 1 up, else a fraction."""
    share = cpus / k
    return float(math.floor(share)) if share >= 1 else math.floor(share * 1e4) / 1e4


def plan_workers(nodes: list[Node], device: str, workers: int | None, threads: int = 0,
                 where: str = "the Ray cluster") -> list[Slot]:
    """Where each worker goes: one per GPU of every node by default, or ``workers`` spread over the nodes.

    ``device`` "auto" uses the GPUs when the cluster has any, else the CPUs; "cuda" needs GPUs; "cpu"
    never uses them. A CPU worker reserves its node's CPUs divided among the node's workers, and runs
    that many torch threads unless ``threads`` says otherwise; a GPU worker reserves one GPU.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise RayClusterError(f"--device {device}: with --executor ray each worker gets a device of its own; "
                              "use --device auto, cpu or cuda")
    gpus = {n: float(int(n.gpus)) for n in nodes if n.gpus >= 1}
    total = int(sum(gpus.values()))
    use_gpu = device == "cuda" or (device == "auto" and total > 0)
    if use_gpu:
        if total == 0:
            raise RayClusterError(f"--device cuda: {where} has no GPU ({inventory(nodes)}); run with --device cpu "
                                  "and --ray-workers N, or add nodes with GPUs")
        count = workers or total
        if count > total:
            raise RayClusterError(f"--ray-workers {count} asks for {count} GPU workers but {where} has {total} "
                                  f"GPU(s) ({inventory(nodes)}); ask for at most {total}, or use --device cpu")
        picks = _spread(count, gpus)
    else:
        cpu_nodes = {n: math.inf for n in nodes if n.cpus > 0}
        if not cpu_nodes:
            raise RayClusterError(f"{where} has no node with CPUs to run workers on ({inventory(nodes)})")
        picks = _spread(workers or len(cpu_nodes), cpu_nodes)
    slots = []
    for node in picks:
        k = picks.count(node)
        if use_gpu:
            slots.append(Slot(node, True, min(1.0, _share(node.cpus, k)), "cuda", threads))
        else:
            cpus = _share(node.cpus, k)
            slots.append(Slot(node, False, cpus, "cpu", threads or max(1, int(cpus))))
    return slots


def software_versions() -> dict[str, str]:
    """The versions that must agree between the driver and every worker: Python, Ray, torch."""
    import ray
    import torch
    return {"python": platform.python_version(), "ray": ray.__version__, "torch": torch.__version__}


def check_versions(driver: dict[str, str], worker: dict[str, str], where: str) -> None:
    """Raise RayClusterError when ``worker`` (reported by the worker at ``where``) differs from ``driver``."""
    differ = [f"{k} {worker.get(k)} (this process: {v})" for k, v in driver.items() if worker.get(k) != v]
    if differ:
        raise RayClusterError(f"{where} runs {', '.join(differ)}; install the same versions on every node "
                              "(pip install -r requirements.txt)")
