"""Every check of the CUDA path in one command, within a time budget (default under 5 minutes), one summary.

Made for a GPU machine lent for minutes: Python 3.12 with torch (2.11 or
later) and torchvision preinstalled, none of this project's other packages,
no registry. The wheels it needs (benchmarks/gpu_wheels.txt) are carried in a
folder, downloaded beforehand where the registry is reachable:

    python3 -m pip download --only-binary=:all: --python-version 3.12 --no-deps -d .whl -r benchmarks/gpu_wheels.txt
    python3 benchmarks/gpu_suite.py --wheels .whl            # on the GPU machine

Steps (each a child process with its own time limit, cut further so the
whole stays within ``--budget-s``; a failure or a hang loses only its step):

    install   the missing wheels into .gpu_site/ (pip --target, so the
              machine's own packages stay as they are); children import it first
    tests     the CUDA tests (pytest -k cuda): CUDA detections against the
              CPU path, graphs against eager, capture only at warm-up, two
              workers at once, staged pinned copies, per-image slices, the
              largest batch measured and a capture out of memory turned into
              the designed error, compiles counted per device, the host
              slot's copy done at return, NMS with one host sync
    checks    gpu_checks.py on SSD-ResNet34 300 + 600 fp16: capture with two
              workers, graph memory measured against the estimate (and the
              largest batch's own measure), the host slot, NMS syncs, time
              and equality to the CPU form, CUDA vs CPU
    offline   bench_efficiency (Offline through LoadGen / bare loop, MFU), 300 + 600 fp16, batch 32
    server    bench_server (peak Server QPS at p99 <= 100 ms / Offline, MFU), 300 + 600 fp16, batch <= 8
    profile   gpu_checks.py profile: kernels by device time, with and without graphs

Not run by default (``--steps``, with a larger ``--budget-s``): singlestream,
precision (bench_precision on CUDA), 700_1400 (efficiency and server at
700 + 1400). The model configs are exactly docs/cuda.md's: configs/ssd300_600.toml
and configs/ssd700_1400.toml, random weights (speed does not depend on them).

The summary, benchmarks/results/gpu_suite.{json,md}, names the GPU, torch and
Python, and each step's status, time and headline figures, read back from the
results file the step wrote (a file older than its step is never quoted).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import gpu_summary  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
REQUIREMENTS = ROOT / "benchmarks" / "gpu_wheels.txt"
SITE = ROOT / ".gpu_site"
STEPS = ("tests", "checks", "offline", "server", "profile", "singlestream", "precision", "700_1400")
DEFAULT_STEPS = STEPS[:5]
LIMIT_S = {"install": 25, "tests": 70, "checks": 50, "offline": 55, "server": 60, "profile": 25,
           "singlestream": 60, "precision": 240, "700_1400": 300}
BUDGET_S = 290.0     # the default steps, install included, within 5 minutes
MIN_STEP_S = 5.0     # a step left less than this is skipped, not started
CONFIGS = {"300_600": "configs/ssd300_600.toml", "700_1400": "configs/ssd700_1400.toml"}
TAIL_CHARS = 3000


@dataclass
class Step:
    name: str
    argv: list[str]
    limit_s: float
    results: str | None = None    # the results file the step writes (name in benchmarks/results)


@dataclass
class Outcome:
    name: str
    argv: list[str]
    status: str               # "ok", "failed (exit N)", "timed out after N s", "skipped: ..."
    seconds: float
    tail: str = ""
    figures: dict = field(default_factory=dict)


def model_flags(sizes: str, device: str) -> list[str]:
    return ["--config", str(ROOT / CONFIGS[sizes]), "--random-weights", "--precision", "fp16", "--device", device]


def plan(steps: Sequence[str], device: str = "cuda", python: str = sys.executable) -> list[Step]:
    """The child processes for ``steps``, in the fixed order of STEPS."""
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown step(s) {unknown}; choose from {', '.join(STEPS)}")
    bench = lambda name: [python, str(ROOT / "benchmarks" / f"{name}.py")]  # noqa: E731
    out: list[Step] = []
    for step in (s for s in STEPS if s in steps):
        if step == "tests":
            out.append(Step("tests", [python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "cuda",
                                      "tests/test_backend.py", "tests/test_perf_paths.py", "tests/test_qsl.py",
                                      "tests/test_cuda_graphs.py", "tests/test_cuda_gpu.py"], LIMIT_S[step]))
        elif step in ("checks", "profile"):
            out.append(Step(step, bench("gpu_checks") + [step] + model_flags("300_600", device)
                            + ["--batch-size", "32"], LIMIT_S[step], f"gpu_{step}.json"))
        elif step == "precision":
            out.append(Step(step, bench("bench_precision") + model_flags("300_600", device)
                            + ["--reps", "5", "--images", "32", "--batch-size", "8", "--suffix", "_gpu"],
                            LIMIT_S[step], "precision_gpu.json"))
        else:
            groups = {"offline": [("offline", "300_600")], "server": [("server", "300_600")],
                      "singlestream": [("singlestream", "300_600")],
                      "700_1400": [("offline", "700_1400"), ("server", "700_1400")]}[step]
            for kind, sizes in groups:
                name = kind if step != "700_1400" else f"700_1400/{kind}"
                limit = LIMIT_S[step] / len(groups)
                out.append(bench_step(name, kind, sizes, device, bench, limit))
    return out


def bench_step(name: str, kind: str, sizes: str, device: str, bench: Callable, limit: float) -> Step:
    """One short benchmark run of ``kind`` (offline, server, singlestream) at ``sizes``."""
    suffix, data = f"_gpu_{sizes}", ["--images", "128"]
    flags = model_flags(sizes, device)
    if kind == "offline":
        argv = bench("bench_efficiency") + flags + data + ["--batch-size", "32", "--seconds", "4", "--repeats", "2"]
        results = f"efficiency{suffix}.json"
    elif kind == "server":
        argv = bench("bench_server") + flags + data + ["--batch-size", "8", "--seconds", "3", "--steps", "2",
                                                        "--min-queries", "300"]
        results = f"server{suffix}.json"
    else:
        argv = bench("bench_singlestream") + flags + data + ["--seconds", "3", "--repeats", "2"]
        results = f"singlestream{suffix}.json"
    return Step(name, argv + ["--suffix", suffix], limit, results)


def requirements(path: Path = REQUIREMENTS) -> list[tuple[str, str]]:
    """(name, version) pairs of the ``name==version`` lines of ``path``."""
    pairs = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pairs.append((name.strip(), version.strip()))
    return pairs


EXACT = {"mlcommons-loadgen", "faster-coco-eval"}   # these at their pinned version; the others at any


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def install(wheels: Path | None, site: Path = SITE, python: str = sys.executable,
            installed: Callable[[str], str | None] = _installed, runner: Callable = subprocess.run) -> Outcome:
    """Install into ``site`` the required packages not already importable at their version (from ``wheels``)."""
    t0 = time.monotonic()
    missing = [f"{n}=={v}" for n, v in requirements()
               if installed(n) is None or (n in EXACT and installed(n) != v)]
    if not missing:
        return Outcome("install", [], "ok", time.monotonic() - t0, "every package is installed already")
    if wheels is None:
        return Outcome("install", [], "failed (no --wheels)", time.monotonic() - t0,
                       f"missing {', '.join(missing)}: download them with the command in {REQUIREMENTS.name} "
                       "and pass --wheels DIR")
    argv = [python, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links", str(wheels),
            "--target", str(site), "--upgrade", *missing]
    return run_step(Step("install", argv, LIMIT_S["install"]), runner)


def child_env(site: Path = SITE) -> dict[str, str]:
    """The environment of every step: the installed wheels first on the import path, output unbuffered."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if site.is_dir():
        env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_step(step: Step, runner: Callable[..., subprocess.CompletedProcess] = subprocess.run,
             limit_s: float | None = None, env: dict | None = None) -> Outcome:
    """Run one child process for at most ``limit_s`` (default its own limit); never raises for its failure."""
    limit = step.limit_s if limit_s is None else limit_s
    print(f"== {step.name} (at most {limit:.0f} s): {' '.join(step.argv[1:])}", flush=True)
    started, t0 = time.time(), time.monotonic()
    try:
        proc = runner(step.argv, cwd=ROOT, capture_output=True, text=True, timeout=limit, env=env)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        tail = ((proc.stdout or "") + (proc.stderr or ""))[-TAIL_CHARS:]
    except subprocess.TimeoutExpired as e:
        status = f"timed out after {limit:.0f} s"
        out = e.stdout or b""
        tail = (out.decode(errors="replace") if isinstance(out, bytes) else out)[-TAIL_CHARS:]
    outcome = Outcome(step.name, step.argv, status, time.monotonic() - t0, tail,
                      gpu_summary.figures(step.name, step.results, started, tail))
    print(f"   {status} in {outcome.seconds:.0f} s", flush=True)
    if status != "ok":
        print("   " + "\n   ".join(tail.splitlines()[-15:]), flush=True)
    return outcome


def run_all(steps: Sequence[Step], budget_s: float, runner: Callable = subprocess.run, spent_s: float = 0.0,
            env: dict | None = None) -> list[Outcome]:
    """Run ``steps`` in order, each within its limit and what is left of ``budget_s`` (0 = no budget)."""
    outcomes, t0 = [], time.monotonic() - spent_s
    for step in steps:
        left = step.limit_s if not budget_s else min(step.limit_s, budget_s - (time.monotonic() - t0))
        if left < MIN_STEP_S:
            outcomes.append(Outcome(step.name, step.argv, f"skipped: the {budget_s:.0f} s budget is spent", 0.0))
            continue
        outcomes.append(run_step(step, runner, left, env))
    return outcomes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", nargs="+", default=list(DEFAULT_STEPS), choices=STEPS)
    p.add_argument("--wheels", type=Path, help="folder of the wheels of benchmarks/gpu_wheels.txt")
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help="whole run's time limit (0: per-step limits only)")
    p.add_argument("--device", default="cuda", help="device for the benchmarks (cpu only to try the script)")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    gpu = gpu_summary.gpu_name()
    print(f"GPU: {gpu}; Python {platform.python_version()}", flush=True)
    outcomes = [install(args.wheels)]
    if outcomes[0].status != "ok" or not outcomes[0].argv:
        print(f"== install: {outcomes[0].status}: {outcomes[0].tail.strip()[-300:]}", flush=True)
    if outcomes[0].status == "ok":
        outcomes += run_all(plan(args.steps, args.device), args.budget_s, spent_s=time.monotonic() - t0,
                            env=child_env())
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "CUDA path: tests and benchmarks", "date": when, "gpu": gpu,
           "python": platform.python_version(), "torch": gpu_summary.torch_version(), "budget_s": args.budget_s,
           "seconds": time.monotonic() - t0, "steps": [asdict(o) for o in outcomes]}
    (RESULTS / "gpu_suite.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = gpu_summary.summary_md(outcomes, doc)
    (RESULTS / "gpu_suite.md").write_text(md)
    print(md)
    return 0 if all(o.status == "ok" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
