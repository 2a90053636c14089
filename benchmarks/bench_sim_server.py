"""Server on simulated H100s: the highest target QPS whose LoadGen p99 meets the official 100 ms bound, over
Offline samples/s, on 1 and 4 devices. Goal >= 0.90.

One process. For each device count: LoadGen Offline runs (median of ``--offline-runs``) give the rate; then
a bisection over ``server_target_qps`` as a fraction of it (first probe at the goal; benchmarks/bench_server.py's
``peak_search``) runs LoadGen Server at the official 100 ms p99 bound and keeps the highest rate whose p99
meets it (VALID, or INVALID only because early stopping wants more queries than a short run has). Every
run gets fresh simulated devices (``backends/simulated/backend.py``: a measuring instrument, not a model) of the
``--sim-profile`` (default h100-300-600: SSD-ResNet34 300+600 at 40% of the H100's dense fp16 peak).

The images gathered default to 300 only: the devices keep the profile's 300+600 time, while the host
copies a fifth of the bytes, so that this 2-core host's memory copies do not set the pace of four H100s
(benchmarks/bench_scaling.py measures the gather). ``--image-size 300 600`` gathers the real sizes.

    .venv/bin/python benchmarks/bench_sim_server.py [--devices 1 4] [--seconds 4] [--steps 5]

Writes benchmarks/results/sim_server.json and sim_server.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common, sim_common  # noqa: E402
from benchmarks.bench_server import OFFICIAL_BOUND_MS, peak_search, probe_table  # noqa: E402

GOAL = 0.90


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sim_common.add_flags(p, seconds=4.0, image_size=(300, 300), profile="h100-300-600", batch_ms=None)
    p.add_argument("--devices", type=int, nargs="+", default=[1, 4], help="device counts")
    p.add_argument("--offline-runs", type=int, default=2, help="Offline runs per device count (median)")
    p.add_argument("--steps", type=int, default=5, help="Server runs in each bisection")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="--server-max-wait-ms of every Server run")
    args = p.parse_args(argv)
    t = sim_common.timing(args, default_profile="h100-300-600")
    per_device = t.samples_per_s(args.batch_size)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        conf = common.write_conf(tmp / "sim.conf", args.seconds, min_queries=1, latency_ms=OFFICIAL_BOUND_MS)
        cfg = sim_common.config(args, conf, tmp / "out")
        data = sim_common.dataset(cfg, args.images)
        print(f"{common.machine()}\n{sim_common.describe(args, t)}\nServer p99 bound {OFFICIAL_BOUND_MS:.0f} ms",
              flush=True)
        for n in args.devices:
            offline_runs = [sim_common.run(cfg, n, t, data, tmp / "out", "Offline",
                                           offline_expected_qps=n * per_device) for _ in range(args.offline_runs)]
            offline = statistics.median([r.loadgen.samples_per_s or 0.0 for r in offline_runs])
            print(f"{n} device(s): Offline {offline:.1f} samples/s ({100 * offline / (n * per_device):.0f}% of the "
                  f"devices' rate)", flush=True)
            probes = peak_search(lambda qps: sim_common.run(
                cfg, n, t, data, tmp / "out", "Server", server_target_qps=qps,
                server_max_wait_ms=args.max_wait_ms), offline, OFFICIAL_BOUND_MS, args.steps, first=GOAL)
            peak = max((x["target_qps"] for x in probes if x["passed"]), default=0.0)
            results.append({"devices": n, "offline_samples_per_s": offline,
                            "offline_runs": [r.loadgen.samples_per_s for r in offline_runs],
                            "server_peak_qps": peak, "ratio": peak / offline if offline else 0.0, "probes": probes})
            print(f"{n} device(s): Server peak {peak:.1f} QPS / Offline {offline:.1f} = {results[-1]['ratio']:.3f} "
                  f"(goal >= {GOAL})", flush=True)
    doc = {"benchmark": "Server on simulated devices: peak QPS meeting the 100 ms p99 bound / Offline samples/s",
           "goal": f">= {GOAL}", "date": common.date(), "machine": common.machine(), "command": common.command(),
           "setup": sim_common.describe(args, t), "latency_bound_ms": OFFICIAL_BOUND_MS, "seconds": args.seconds,
           "device_samples_per_s": per_device, "results": results}
    table = [f"Server p99 bound {OFFICIAL_BOUND_MS:.0f} ms (official); one device {per_device:.0f} samples/s at "
             f"batch {args.batch_size}.", "",
             "| devices | Offline samples/s | Server peak QPS | ratio | goal |", "|---|---|---|---|---|"]
    table += [f"| {r['devices']} | {r['offline_samples_per_s']:.1f} | {r['server_peak_qps']:.1f} | "
              f"{r['ratio']:.3f} | >= {GOAL} |" for r in results]
    for r in results:
        table += ["", f"{r['devices']} device(s), Server probes:", "", *probe_table(r["probes"])]
    table += ["", "INVALID with the bound met = early stopping wanted more queries than a short run has."]
    common.save("sim_server" + args.suffix, doc, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
