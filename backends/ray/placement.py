"""Where the workers go: how many, what each reserves, and one placement group that reserves them all.

The plan reads what the cluster's nodes declare (for the defaults: one worker per GPU, or one per
node on CPUs) and gives every worker the same bundle: one GPU (and up to one CPU), or an equal
share of a node's CPUs. The reservation is Ray's: a placement group of those bundles with the
SPREAD strategy (as few workers per node as fit), made all at once or not at all against the
resources that are free now, so a run never starts with part of its workers. A group that cannot
be placed within ``timeout_s`` is removed and reported, with what is free, in one line.

Assumptions, checked against Ray 2.60.0: ``ray.nodes()`` lists each node's declared resources;
``ray.available_resources()`` what no one holds; bundle amounts above 1 must be whole numbers
(fractions below 1 are allowed); an actor given ``PlacementGroupSchedulingStrategy`` with a bundle
index runs on that bundle's node and, when restarted, on it again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .cluster import RayClusterError

PLACEMENT_TIMEOUT_S = 60.0   # how long the group of all workers may wait for free resources


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
    """What one worker reserves (its bundle) and how it runs."""

    gpu: bool          # reserves one whole GPU
    num_cpus: float    # CPUs reserved (a fraction below 1 when a node is shared by more workers than CPUs)
    device: str        # the device the worker's backend uses: "cuda" (the one GPU Ray lets it see) or "cpu"
    threads: int       # torch CPU threads of the worker; 0 = torch's default

    def bundle(self) -> dict[str, float]:
        return {k: v for k, v in (("CPU", self.num_cpus), ("GPU", 1.0 if self.gpu else 0.0)) if v > 0}


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


def _share(cpus: float, k: int) -> float:
    """CPUs each of ``k`` workers reserves on a node with ``cpus``: whole numbers from 1 up, else a fraction."""
    share = cpus / k
    return float(math.floor(share)) if share >= 1 else math.floor(share * 1e4) / 1e4


def plan_workers(nodes: list[Node], device: str, workers: int | None, threads: int = 0,
                 where: str = "the Ray cluster") -> list[Slot]:
    """What each worker reserves: one per GPU of the cluster by default, or ``workers`` spread over the nodes.

    ``device`` "auto" uses the GPUs when the cluster has any, else the CPUs; "cuda" needs GPUs; "cpu"
    never uses them. A CPU worker reserves an equal share of a node's CPUs (the smallest node's, divided
    among the workers each node gets when spread evenly) and runs that many torch threads unless
    ``threads`` says otherwise; a GPU worker reserves one GPU and up to one CPU.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise RayClusterError(f"--device {device}: with --executor ray each worker gets a device of its own; "
                              "use --device auto, cpu or cuda")
    gpu_nodes = [n for n in nodes if n.gpus >= 1]
    total = sum(int(n.gpus) for n in gpu_nodes)
    use_gpu = device == "cuda" or (device == "auto" and total > 0)
    if use_gpu:
        if total == 0:
            raise RayClusterError(f"--device cuda: {where} has no GPU ({inventory(nodes)}); run with --device cpu "
                                  "and --ray-workers N, or add nodes with GPUs")
        count = workers or total
        if count > total:
            raise RayClusterError(f"--ray-workers {count} asks for {count} GPU workers but {where} has {total} "
                                  f"GPU(s) ({inventory(nodes)}); ask for at most {total}, or use --device cpu")
        cpus = min(1.0, min(_share(n.cpus, int(n.gpus)) for n in gpu_nodes))
        return [Slot(True, cpus, "cuda", threads)] * count
    cpu_nodes = [n for n in nodes if n.cpus > 0]
    if not cpu_nodes:
        raise RayClusterError(f"{where} has no node with CPUs to run workers on ({inventory(nodes)})")
    count = workers or len(cpu_nodes)
    cpus = _share(min(n.cpus for n in cpu_nodes), math.ceil(count / len(cpu_nodes)))
    return [Slot(False, cpus, "cpu", threads or max(1, int(cpus)))] * count


def describe(slots: list[Slot]) -> str:
    """'2 workers of {CPU: 1, GPU: 1}' for messages."""
    bundle = ", ".join(f"{k}: {v:g}" for k, v in slots[0].bundle().items())
    return f"{len(slots)} worker{'s' if len(slots) > 1 else ''} of {{{bundle}}}"


def reserve(slots: list[Slot], timeout_s: float, where: str) -> Any:
    """A placement group holding one bundle per slot (SPREAD), ready; RayClusterError when it cannot be
    placed within ``timeout_s`` (the group is removed: nothing stays reserved)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    group = placement_group([s.bundle() for s in slots], strategy="SPREAD")
    if not group.wait(timeout_seconds=timeout_s):
        remove_placement_group(group)
        free = ray.available_resources()
        raise RayClusterError(f"{where} could not reserve {describe(slots)} within {timeout_s:g} s: free now "
                              f"{free.get('CPU', 0):g} CPU, {free.get('GPU', 0):g} GPU of "
                              f"{inventory(alive_nodes())}; another job holds the rest "
                              "(`ray status` shows it): wait for it, or ask for fewer workers (--ray-workers)")
    return group


def bundle_nodes(group: Any) -> list[str]:
    """'node 10.0.0.1 (host)' for each bundle of a ready placement group, in bundle order."""
    from ray.util.placement_group import placement_group_table
    names = {n.node_id: str(n) for n in alive_nodes()}
    where = placement_group_table(group).get("bundles_to_node_id", {})
    return [names.get(where.get(i, ""), f"node {where.get(i, '?')[:8]}") for i in range(group.bundle_count)]


def release(group: Any) -> None:
    """Remove the placement group (its actors with it); nothing when it is gone already."""
    from ray.util.placement_group import remove_placement_group
    try:
        remove_placement_group(group)
    except Exception:  # noqa: BLE001 - the cluster or the group is gone: nothing left to release
        pass
