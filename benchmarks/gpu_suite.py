"""Every check of the CUDA path, in one command, with one summary: run it on a GPU machine.

Steps, each a child process with its own time limit (a failure or a hang in
one step does not lose the others; its exit status and the end of its output
are kept):

    tests       the tests that need a GPU: CUDA detections against the CPU
                path within fp16 tolerance, CUDA graphs against eager, staged
                pinned copies, workers per GPU (tests/test_backend.py,
                tests/test_perf_paths.py, tests/test_qsl.py)
    precision   bench_precision.py on CUDA: fp32, fp16 (NCHW, channels_last,
                with and without CUDA graphs), bf16, each against fp32
    300_600     bench_efficiency, bench_server and bench_singlestream for
                SSD-ResNet34 300 + 600, fp16, random weights (speed does not
                depend on the weights)
    700_1400    the same at 700 + 1400

Each benchmark writes its own results file (suffix ``_gpu_<sizes>``); this
script then reads them back and writes ``benchmarks/results/gpu_suite.json``
and ``gpu_suite.md``: the GPU's name, each step's status and time, and the
headline figures (Offline samples/s, harness efficiency, Server peak QPS and
its ratio to Offline, SingleStream p90, MFU). A step whose results
file is older than the step's start reports no figures, so a stale file is
never quoted.

    python benchmarks/gpu_suite.py [--steps tests precision 300_600 700_1400] [--quick]

``--quick`` shortens every run (for a machine lent for minutes); the figures
are then rougher but still side by side. ``--steps`` runs a subset; the summary
always covers the steps run in this call.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
STEPS = ("tests", "precision", "300_600", "700_1400")
MODEL = ["--backbone", "resnet34", "--num-classes", "81", "--random-weights", "--precision", "fp16"]
TAIL_CHARS = 3000


@dataclass
class Step:
    name: str                 # one of STEPS, or "<group>/<benchmark>" for a benchmark of a size group
    argv: list[str]
    timeout_s: float
    results: str | None = None    # the results file the step writes (name in benchmarks/results)


@dataclass
class Outcome:
    name: str
    argv: list[str]
    status: str               # "ok", "failed (exit N)", "timed out after N s"
    seconds: float
    tail: str = ""
    figures: dict = field(default_factory=dict)


def plan(steps: Sequence[str], quick: bool, device: str = "cuda", python: str = sys.executable) -> list[Step]:
    """The child processes for ``steps``, in order."""
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown step(s) {unknown}; choose from {', '.join(STEPS)}")
    bench = lambda name: [python, str(ROOT / "benchmarks" / f"bench_{name}.py")]  # noqa: E731
    secs = ["--seconds", "4" if quick else "10", "--repeats", "2" if quick else "3"]
    out: list[Step] = []
    for step in STEPS:              # fixed order: tests first, the slowest sizes last
        if step not in steps:
            continue
        if step == "tests":
            out.append(Step("tests", [python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                                      "tests/test_backend.py", "tests/test_perf_paths.py", "tests/test_qsl.py"], 900))
        elif step == "precision":
            out.append(Step("precision", bench("precision") + ["--device", device, "--reps", "5" if quick else "20",
                                                               "--images", "32" if quick else "64",
                                                               "--suffix", "_gpu"], 900, "precision_gpu.json"))
        else:
            s0, s1 = step.split("_")
            model = MODEL + ["--device", device, "--image-size", s0, s1]
            suffix = f"_gpu_{step}"
            images = ["--images", "128" if quick else "256"]
            out += [
                Step(f"{step}/efficiency", bench("efficiency") + model + secs + images +
                     ["--batch-size", "32", "--suffix", suffix], 900, f"efficiency{suffix}.json"),
                Step(f"{step}/server", bench("server") + model + images +
                     ["--seconds", "4" if quick else "10", "--batch-size", "8", "--steps", "3" if quick else "5",
                      "--min-queries", "300" if quick else "1000", "--suffix", suffix], 1200, f"server{suffix}.json"),
                Step(f"{step}/singlestream", bench("singlestream") + model + secs + images +
                     ["--suffix", suffix], 600, f"singlestream{suffix}.json"),
            ]
    return out


def figures(step: Step, started: float, results: Path = RESULTS) -> dict:
    """The headline figures of ``step``'s results file, if it was written after ``started`` (epoch seconds)."""
    if step.results is None:
        return {}
    path = results / step.results
    if not path.is_file() or path.stat().st_mtime < started:
        return {"missing": f"{step.results} was not written by this step"}
    doc = json.loads(path.read_text())
    keys = {"efficiency": ("ratio_median", "loadgen_samples_per_s_median", "bare_samples_per_s_median", "mfu"),
            "server": ("server_peak_qps", "offline_samples_per_s", "ratio", "latency_bound_ms", "mfu_at_peak"),
            "singlestream": ("loadgen_p90_ms_median", "bare_p90_ms_median", "ratio_median")}
    kind = step.name.split("/")[-1]
    if kind == "precision":
        return {r["option"]: {k: r.get(k) for k in ("ms_per_sample", "speedup", "map_delta_points", "agreement")}
                for r in doc.get("rows", [])} | {"machine": doc.get("machine")}
    return {k: doc.get(k) for k in keys.get(kind, ())} | {"machine": doc.get("machine")}


def run_step(step: Step, runner: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> Outcome:
    """Run one child process; never raises for the child's failure or timeout."""
    print(f"== {step.name}: {' '.join(step.argv[1:])}", flush=True)
    started, t0 = time.time(), time.monotonic()
    try:
        proc = runner(step.argv, cwd=ROOT, capture_output=True, text=True, timeout=step.timeout_s)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        tail = (proc.stdout + proc.stderr)[-TAIL_CHARS:]
    except subprocess.TimeoutExpired as e:
        status = f"timed out after {step.timeout_s:.0f} s"
        tail = ((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""))
        tail = tail[-TAIL_CHARS:]
    found = figures(step, started)
    if step.name == "tests":   # pytest's last line: how many passed, failed and skipped (a skipped CUDA test shows)
        counts = [ln for ln in tail.splitlines() if " passed" in ln or " failed" in ln or " error" in ln]
        found = {"pytest": counts[-1].strip("= ")} if counts else {}
    outcome = Outcome(step.name, step.argv, status, time.monotonic() - t0, tail, found)
    print(f"   {status} in {outcome.seconds:.0f} s", flush=True)
    if status != "ok":
        print("   " + "\n   ".join(tail.splitlines()[-15:]), flush=True)
    return outcome


def gpu_name() -> str:
    try:
        import torch
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA GPU"
    except Exception as e:  # noqa: BLE001 - the summary still gets written
        return f"unknown ({type(e).__name__}: {e})"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def summary_md(outcomes: Sequence[Outcome], gpu: str, when: str) -> str:
    lines = ["# CUDA path: tests and benchmarks", "", f"`python benchmarks/gpu_suite.py`, {when}, GPU: {gpu}.", "",
             "| step | status | seconds | figures |", "|---|---|---|---|"]
    for o in outcomes:
        f = o.figures
        kind = o.name.split("/")[-1]
        if "missing" in f:
            text = f["missing"]
        elif kind == "efficiency" and f:
            text = (f"Offline {f['loadgen_samples_per_s_median']:.1f} samples/s, bare {f['bare_samples_per_s_median']:.1f}"
                    f"; efficiency {f['ratio_median']:.3f} (goal >= 0.95); MFU {_pct(f['mfu'])} (goal >= 40%)")
        elif kind == "server" and f:
            text = (f"peak {f['server_peak_qps']:.1f} QPS at p99 <= {f['latency_bound_ms']:.0f} ms; "
                    f"/ Offline {f['offline_samples_per_s']:.1f} = {f['ratio']:.3f} (goal >= 0.85); "
                    f"MFU {_pct(f['mfu_at_peak'])}")
        elif kind == "singlestream" and f:
            text = (f"p90 {f['loadgen_p90_ms_median']:.2f} ms, bare {f['bare_p90_ms_median']:.2f} ms; "
                    f"ratio {f['ratio_median']:.3f} (goal <= 1.05)")
        elif kind == "tests" and f:
            text = f["pytest"]
        elif kind == "precision" and f:
            text = "; ".join(f"{k}: {v['ms_per_sample']:.2f} ms, mAP {v['map_delta_points']:+.2f}, "
                             f"agreement {v['agreement']:.3f}" for k, v in f.items() if isinstance(v, dict))
        else:
            text = ""
        lines.append(f"| {o.name} | {o.status} | {o.seconds:.0f} | {text} |")
    failed = [o for o in outcomes if o.status != "ok"]
    for o in failed:
        lines += ["", f"## {o.name}: {o.status}", "", "```", o.tail.strip()[-1500:], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    p.add_argument("--quick", action="store_true", help="shorter runs, for a machine lent for minutes")
    p.add_argument("--device", default="cuda", help="device for the benchmarks (cpu only to try the script)")
    args = p.parse_args(argv)
    gpu = gpu_name()
    print(f"GPU: {gpu}", flush=True)
    outcomes = [run_step(s) for s in plan(args.steps, args.quick, args.device)]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "CUDA path: tests and benchmarks", "date": when, "gpu": gpu, "quick": args.quick,
           "steps": [asdict(o) for o in outcomes]}
    (RESULTS / "gpu_suite.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = summary_md(outcomes, gpu, when)
    (RESULTS / "gpu_suite.md").write_text(md)
    print(md)
    return 0 if all(o.status == "ok" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
