"""Remote efficiency: Offline samples/s with N simulated devices as Ray actors over the same N in this process.

Goal >= 0.90. The simulated accelerator (``--backend simulated``, backends/simulated/backend.py) holds each
batch ``--sim-batch-ms A B`` milliseconds (A per batch + B per sample, sleeping, so it uses no CPU),
each device served by two pipeline workers as a GPU is: what is measured is what the executor
costs, not a model. Both sides are built by ``make_backend`` as ``run.py`` builds them and run the
same LoadGen Offline performance run through the same pipeline on the same in-memory data, uint8
images at ``--image-size`` (the demo's 300 and 600 by default), batches of ``--batch-size``:

- local: ``--executor local --backend simulated --sim-devices N``, N devices in this process;
- Ray: ``--executor ray --backend simulated --sim-devices N``, N actors of one device each on a Ray
  cluster started on this machine with ``ray.cluster_utils`` (one node for N = 1, 2, 4; then two
  nodes, the workers spread over both). Each set LoadGen loads goes to the workers once through
  Ray's object store; a batch sends only its rows of it. The bytes a batch sends from this process
  (its call's arguments, serialized) are measured and printed: goal <= 1 KB.

Each side first does one untimed run (the first run through Ray pays one-off costs: fresh shared
memory for the object store, first calls), then pairs are alternated ``--repeats`` times and the
median ratio quoted. LoadGen is told the ideal rate (N x batch / batch time), so that its Offline
query lasts about ``--seconds``.

    .venv/bin/python benchmarks/bench_ray.py [--sim-batch-ms 100 0 | --sim-profile NAME] [--workers 1 2 4]
        [--seconds 10] [--repeats 3]

Writes benchmarks/results/ray_efficiency.json and ray_efficiency.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.simulated.backend import SimSettings  # noqa: E402
from benchmarks import common, sim_common  # noqa: E402
from harness.run.backend import close_backend, make_backend  # noqa: E402
from harness.settings.config import Config  # noqa: E402

GOAL = 0.90
BYTES_GOAL = 1024   # sent from the driver per batch


def _cluster(nodes: int, cpus_per_node: int, store_bytes: int):
    """A Ray cluster of ``nodes`` on this machine, this process its driver.

    ``ray.cluster_utils`` gives each node a 150 MB object store unless told otherwise: smaller than the
    batches in flight here, which would then be spilled to disk. ``ray start`` gives 30% of the RAM.
    """
    import ray
    from ray.cluster_utils import Cluster

    from backends.ray.cluster import WORKER_PACKAGES, code_env
    node = {"num_cpus": cpus_per_node, "object_store_memory": store_bytes}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(**node)
    cluster.wait_for_nodes()
    with tempfile.TemporaryDirectory(prefix="ray-job-") as empty:   # the workers' (empty) working directory
        ray.init(address=cluster.address, runtime_env=code_env(WORKER_PACKAGES, empty), logging_level="WARNING")
    return cluster


def _tcp_bytes_sent() -> int:
    """Bytes this process has sent over the TCP sockets it holds now (``ss``: Ray's gRPC channels), or -1."""
    try:
        out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return -1
    total, mine = 0, False
    for line in out.splitlines():   # a socket's line, then its details indented
        if not line[:1].isspace():
            mine = f"pid={os.getpid()}," in line
        elif mine and (m := re.search(r"bytes_sent:(\d+)", line)):
            total += int(m.group(1))
    return total


def _backend(cfg: Config, sim: SimSettings, address: str | None = None):
    """The simulated devices as run.py builds them: in this process, or on the Ray cluster at ``address``."""
    if address is not None:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, executor="ray", ray_address=address))
    return make_backend(cfg, "simulated", sim=sim)


def _rate(cfg: Config, backend, dataset, out: Path, qps: float) -> tuple[float, object]:
    run = common.loadgen_run(cfg, backend, dataset, out, "Offline", offline_expected_qps=qps)
    return run.loadgen.samples_per_s or 0.0, run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sim_common.add_flags(p, seconds=10.0, image_size=(300, 600), profile=None, batch_ms=(100.0, 0.0), batch=8)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="N on one node")
    p.add_argument("--two-node-workers", type=int, nargs="*", default=[2, 4], help="N spread over two nodes")
    p.add_argument("--store-gb", type=float, default=2.0, help="object store per simulated node, GiB")
    args = p.parse_args(argv)
    import ray

    timing = sim_common.timing(args)
    batch_ms = timing.batch_s(args.batch_size) * 1e3
    cases = [(1, n) for n in args.workers] + [(2, n) for n in args.two_node_workers]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        conf = common.write_conf(tmp / "bench.conf", args.seconds)
        cfg = sim_common.config(args, conf, tmp / "out")
        dataset = sim_common.dataset(cfg, args.images)
        sizes = cfg.model.sizes
        batch_mb = args.batch_size * sum(3 * s * s for s in sizes) / 1e6
        print(f"{common.machine()}\nsimulated device: {batch_ms:g} ms per batch of {args.batch_size} at "
              f"{'+'.join(map(str, sizes))} ({batch_mb:.1f} MB of uint8 per batch), {args.seconds:g} s runs",
              flush=True)
        for nodes in sorted({c[0] for c in cases}):
            cluster = _cluster(nodes, cpus_per_node=2, store_bytes=int(args.store_gb * 2**30))
            try:
                for n in [n for k, n in cases if k == nodes]:
                    ideal = n * timing.samples_per_s(args.batch_size)
                    local = _backend(cfg, SimSettings(timing, n))
                    remote = _backend(cfg, SimSettings(timing, n), cluster.address)
                    pairs = []
                    sent = 0.0
                    wire = [0, 0]   # TCP bytes the driver sent in the timed Ray runs, batches sent in them
                    try:
                        for b in (local, remote):   # untimed: the first run's one-off costs (fresh shared memory)
                            _rate(cfg, b, dataset, tmp / "out", ideal)
                        for r in range(args.repeats):
                            lo, lo_run = _rate(cfg, local, dataset, tmp / "out", ideal)
                            tcp0, sent0 = _tcp_bytes_sent(), sum(p.sent_batches for p in remote.workers())
                            ry, ry_run = _rate(cfg, remote, dataset, tmp / "out", ideal)
                            wire[0] += _tcp_bytes_sent() - tcp0
                            wire[1] += sum(p.sent_batches for p in remote.workers()) - sent0
                            failed = len(lo_run.failures) + len(ry_run.failures)
                            pairs.append({"local_samples_per_s": lo, "ray_samples_per_s": ry, "ratio": ry / lo,
                                          "local_validity": lo_run.loadgen.validity,
                                          "ray_validity": ry_run.loadgen.validity, "failed": failed})
                            print(f"  {nodes} node(s), N={n}, pair {r + 1}: local {lo:7.1f}, Ray {ry:7.1f} "
                                  f"samples/s (ideal {ideal:.0f}), ratio {ry / lo:.3f}"
                                  + (f", {failed} FAILED" if failed else ""), flush=True)
                        sent = remote.payload_bytes()
                        tcp = wire[0] / wire[1] if wire[1] else 0.0
                        print(f"  {nodes} node(s), N={n}: {sent:.0f} bytes of arguments per batch from the driver, "
                              f"{tcp:.0f} bytes of TCP per batch (all it sent: Ray's headers, pings, replies; its "
                              f"images: {batch_mb * 1e6:.0f}; goal <= {BYTES_GOAL})", flush=True)
                    finally:
                        close_backend(remote)
                    rows.append({"nodes": nodes, "workers": n, "ideal_samples_per_s": ideal,
                                 "ratio_median": common.median([x["ratio"] for x in pairs]),
                                 "local_median": common.median([x["local_samples_per_s"] for x in pairs]),
                                 "ray_median": common.median([x["ray_samples_per_s"] for x in pairs]),
                                 "bytes_per_batch": sent, "tcp_bytes_per_batch": tcp, "pairs": pairs})
            finally:
                ray.shutdown()
                cluster.shutdown()
    worst = min(r["ratio_median"] for r in rows)
    most_bytes = max(max(r["bytes_per_batch"], r["tcp_bytes_per_batch"]) for r in rows)
    print("remote efficiency (medians): " + ", ".join(
        f"{r['nodes']} node(s) N={r['workers']}: {r['ratio_median']:.3f}" for r in rows)
        + f"; lowest {worst:.3f} (goal >= {GOAL}); at most {most_bytes:.0f} bytes sent per batch "
        f"(goal <= {BYTES_GOAL})")
    doc = {"benchmark": "Remote efficiency: Offline through --executor ray / the same devices in-process",
           "goal": f">= {GOAL}", "date": common.date(),
           "machine": common.machine(), "command": common.command(),
           "model": f"simulated devices ({timing.describe()}: {batch_ms:g} ms per batch of {args.batch_size}), "
                    f"uint8 inputs at {'+'.join(map(str, sizes))}",
           "weights": "no model", "sim_batch_ms": [timing.fixed_ms, timing.per_sample_ms],
           "batch_size": args.batch_size,
           "batch_mb": batch_mb, "seconds": args.seconds, "store_gb_per_node": args.store_gb, "lowest_ratio": worst,
           "bytes_goal": BYTES_GOAL, "most_bytes_per_batch": most_bytes, "cases": rows}
    table = ["| nodes | N | ideal samples/s | local samples/s | Ray samples/s | Ray / local | bytes per batch: "
             "arguments / TCP |", "|---|---|---|---|---|---|---|"]
    table += [f"| {r['nodes']} | {r['workers']} | {r['ideal_samples_per_s']:.0f} | {r['local_median']:.1f} | "
              f"{r['ray_median']:.1f} | **{r['ratio_median']:.3f}** | {r['bytes_per_batch']:.0f} / "
              f"{r['tcp_bytes_per_batch']:.0f} |" for r in rows]
    table += ["", f"Medians of {args.repeats} alternated pairs; goal >= {GOAL}. Bytes sent from the driver per batch "
              f"(goal <= {BYTES_GOAL}; the batch's images are {batch_mb * 1e6:.0f}): the call's arguments, "
              "serialized; and every byte the driver process sent over TCP during the timed Ray runs (`ss`), "
              "Ray's task headers, pings and replies included, divided by the batches sent."]
    common.save("ray_efficiency" + args.suffix, doc, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
