"""Remote efficiency: Offline samples/s with N simulated devices as Ray actors over the same N in this process.

Goal >= 0.90. A simulated device holds each batch ``--batch-ms`` milliseconds (sleeping, so it uses no
CPU) and returns fixed detections: what is measured is what the executor costs, not a model. Both
sides run the same LoadGen Offline performance run through the same pipeline (one loader and one
compute thread per worker) on the same in-memory data, uint8 images at ``--image-size`` (the demo's
300 and 600 by default), batches of ``--batch-size``:

- local: N devices in this process (``--executor local``);
- Ray: N actors on a Ray cluster started on this machine with ``ray.cluster_utils`` (one node for
  N = 1, 2, 4; then two nodes, the workers spread over both), each batch sent as numpy through Ray's
  object store and the detections sent back, as ``--executor ray`` does.

Each side first does one untimed run (the first run through Ray pays one-off costs: fresh shared
memory for the object store, first calls), then pairs are alternated ``--repeats`` times and the
median ratio quoted. LoadGen is told the ideal rate (N x batch / batch time), so that its Offline
query lasts about ``--seconds``.

    .venv/bin/python benchmarks/bench_ray.py [--batch-ms 100] [--workers 1 2 4] [--seconds 10] [--repeats 3]

Writes benchmarks/results/ray_efficiency.json and ray_efficiency.md.
"""
from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.config import ModelConfig  # noqa: E402
from backends.null import NullBackend  # noqa: E402
from benchmarks import common  # noqa: E402
from harness.run.dataset import Dataset  # noqa: E402
from harness.settings.config import Config, RunConfig  # noqa: E402
from qsl.memory_qsl import MemoryQSL  # noqa: E402

GOAL = 0.90


class LocalDevices(NullBackend):
    """N simulated devices in this process: ``workers()`` gives one NullBackend per device."""

    def __init__(self, model: ModelConfig, n: int, batch_ms: float) -> None:
        super().__init__(model, latency_ms=batch_ms)
        self.devices = [NullBackend(model, latency_ms=batch_ms) for _ in range(n)]

    def workers(self) -> list[NullBackend]:
        return self.devices


def simulated_device(model: ModelConfig, batch_ms: float, device: str, threads: int, weights) -> NullBackend:
    """The Ray workers' factory: one simulated device."""
    return NullBackend(model, latency_ms=batch_ms)


def _cluster(nodes: int, cpus_per_node: int, store_bytes: int):
    """A Ray cluster of ``nodes`` on this machine, this process its driver.

    ``ray.cluster_utils`` gives each node a 150 MB object store unless told otherwise: smaller than the
    batches in flight here, which would then be spilled to disk. ``ray start`` gives 30% of the RAM.
    """
    import ray
    from ray.cluster_utils import Cluster

    from backends.ray.cluster import code_env
    node = {"num_cpus": cpus_per_node, "object_store_memory": store_bytes}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(**node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env=code_env(("backends", "harness")), logging_level="WARNING")
    return cluster


def _ray_backend(cluster, model: ModelConfig, n: int, batch_ms: float):
    from ray import cloudpickle

    from backends.ray.backend import RayBackend
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return RayBackend.start(functools.partial(simulated_device, model, batch_ms), address=cluster.address,
                            device="cpu", workers=n)


def _rate(cfg: Config, backend, dataset, out: Path, qps: float) -> tuple[float, object]:
    run = common.loadgen_run(cfg, backend, dataset, out, "Offline", offline_expected_qps=qps)
    return run.loadgen.samples_per_s or 0.0, run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-ms", type=float, default=100.0, help="time a simulated device holds one batch")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, nargs=2, default=(300, 600), metavar=("S0", "S1"))
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="N on one node")
    p.add_argument("--two-node-workers", type=int, nargs="*", default=[2, 4], help="N spread over two nodes")
    p.add_argument("--images", type=int, default=64, help="samples in the data set (all of them loaded)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each Offline run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--store-gb", type=float, default=2.0, help="object store per simulated node, GiB")
    p.add_argument("--suffix", default="")
    args = p.parse_args(argv)
    import ray

    model = ModelConfig(image_size=tuple(args.image_size))
    dataset = Dataset(MemoryQSL(args.images, sizes=model.sizes))
    batch_mb = args.batch_size * sum(3 * s * s for s in model.sizes) / 1e6
    print(f"{common.machine()}\nsimulated device: {args.batch_ms:g} ms per batch of {args.batch_size} at "
          f"{'+'.join(map(str, model.sizes))} ({batch_mb:.1f} MB of uint8 per batch), {args.seconds:g} s runs",
          flush=True)
    cases = [(1, n) for n in args.workers] + [(2, n) for n in args.two_node_workers]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        conf = common.write_conf(tmp / "bench.conf", args.seconds)
        cfg = Config(model=model, run=RunConfig(batch_size=args.batch_size, user_conf=str(conf),
                                                output_dir=str(tmp / "out")))
        for nodes in sorted({c[0] for c in cases}):
            cluster = _cluster(nodes, cpus_per_node=2, store_bytes=int(args.store_gb * 2**30))
            try:
                for n in [n for k, n in cases if k == nodes]:
                    ideal = n * args.batch_size / (args.batch_ms / 1e3)
                    local = LocalDevices(model, n, args.batch_ms)
                    remote = _ray_backend(cluster, model, n, args.batch_ms)
                    pairs = []
                    try:
                        for b in (local, remote):   # untimed: the first run's one-off costs (fresh shared memory)
                            _rate(cfg, b, dataset, tmp / "out", ideal)
                        for r in range(args.repeats):
                            lo, lo_run = _rate(cfg, local, dataset, tmp / "out", ideal)
                            ry, ry_run = _rate(cfg, remote, dataset, tmp / "out", ideal)
                            failed = len(lo_run.failures) + len(ry_run.failures)
                            pairs.append({"local_samples_per_s": lo, "ray_samples_per_s": ry, "ratio": ry / lo,
                                          "local_validity": lo_run.loadgen.validity,
                                          "ray_validity": ry_run.loadgen.validity, "failed": failed})
                            print(f"  {nodes} node(s), N={n}, pair {r + 1}: local {lo:7.1f}, Ray {ry:7.1f} "
                                  f"samples/s (ideal {ideal:.0f}), ratio {ry / lo:.3f}"
                                  + (f", {failed} FAILED" if failed else ""), flush=True)
                    finally:
                        remote.close()
                    rows.append({"nodes": nodes, "workers": n, "ideal_samples_per_s": ideal,
                                 "ratio_median": common.median([x["ratio"] for x in pairs]),
                                 "local_median": common.median([x["local_samples_per_s"] for x in pairs]),
                                 "ray_median": common.median([x["ray_samples_per_s"] for x in pairs]),
                                 "pairs": pairs})
            finally:
                ray.shutdown()
                cluster.shutdown()
    worst = min(r["ratio_median"] for r in rows)
    print("remote efficiency (medians): " + ", ".join(
        f"{r['nodes']} node(s) N={r['workers']}: {r['ratio_median']:.3f}" for r in rows)
        + f"; lowest {worst:.3f} (goal >= {GOAL})")
    doc = {"benchmark": "Remote efficiency: Offline through --executor ray / the same devices in-process",
           "goal": f">= {GOAL}", "date": common.header(Config(model=model), None, "")["date"],
           "machine": common.machine(), "command": common.command(),
           "model": f"simulated device (null backend sleeping {args.batch_ms:g} ms per batch of {args.batch_size}), "
                    f"uint8 inputs at {'+'.join(map(str, model.sizes))}",
           "weights": "no model", "batch_ms": args.batch_ms, "batch_size": args.batch_size,
           "batch_mb": batch_mb, "seconds": args.seconds, "store_gb_per_node": args.store_gb, "lowest_ratio": worst, "cases": rows}
    table = ["| nodes | N | ideal samples/s | local samples/s | Ray samples/s | Ray / local |", "|---|---|---|---|---|---|"]
    table += [f"| {r['nodes']} | {r['workers']} | {r['ideal_samples_per_s']:.0f} | {r['local_median']:.1f} | "
              f"{r['ray_median']:.1f} | **{r['ratio_median']:.3f}** |" for r in rows]
    table += ["", f"Medians of {args.repeats} alternated pairs; goal >= {GOAL}."]
    common.save("ray_efficiency" + args.suffix, doc, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
