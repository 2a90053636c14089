"""How fast ``run.py`` answers bad input: every check comes before torch is imported or a model is built.

Usage:
    python benchmarks/bench_startup.py [--repeats 7] [--baseline DIR]

Times, as fresh processes (the way a user types them), ``run.py --bogus``,
``run.py --help`` and ``run.py --image-size 300 5000 ...`` (a size the cache
refuses), and ``python -c "import torch"`` beside them for scale. Each command
also reports whether torch got imported. With ``--baseline DIR`` (another
checkout of the project, e.g. ``git archive <commit> | tar -x -C DIR``) every
command runs alternately in both trees, so the ratio is measured side by side;
a baseline that builds the model before refusing the size is timed once (it
takes minutes). Medians; writes ``benchmarks/results/startup.json`` and
``startup.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
SLOW_S = 30.0     # a command slower than this is not repeated
PROBE = ("import sys, runpy\nsys.argv = ['run.py', *sys.argv[1:]]\ntry:\n    runpy.run_path('run.py', "
         "run_name='__main__')\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules, file=sys.stderr)\n")


def _time(tree: Path, argv: list[str]) -> tuple[float, bool]:
    """(seconds, whether torch was imported) for ``run.py argv`` in ``tree``, in a fresh interpreter."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=tree, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tree)})
    seconds = time.perf_counter() - t0
    return seconds, proc.stderr.strip().splitlines()[-1] == "True"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--baseline", type=Path, help="another checkout to time alternately with this one")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        from qsl.synthetic.dataset import make_synthetic_coco  # noqa: E402 - after the path is set
        make_synthetic_coco(Path(tmp), 2, seed=0)
        commands = {"--bogus": ["--bogus"], "--help": ["--help"],
                    "--image-size 300 5000": ["--data", tmp, "--image-size", "300", "5000"]}
        trees = {"this tree": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
        times: dict[str, dict[str, list[float]]] = {t: {c: [] for c in commands} for t in trees}
        torch_imported: dict[str, dict[str, bool]] = {t: {} for t in trees}
        torch_s = []
        for _ in range(args.repeats):
            for name, argv in commands.items():
                for tree, path in trees.items():
                    if times[tree][name] and times[tree][name][0] > SLOW_S:
                        continue   # a baseline that builds the model first: once is enough
                    s, imported = _time(path, argv)
                    times[tree][name].append(s)
                    torch_imported[tree][name] = imported
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import torch"], check=True)
            torch_s.append(time.perf_counter() - t0)
    med = {t: {c: round(statistics.median(v), 3) for c, v in cs.items()} for t, cs in times.items()}
    doc = {"benchmark": "run.py answers bad input before torch", "date": datetime.now(timezone.utc).isoformat(),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
                      f"{os.getloadavg()[0]:.1f}", "command": " ".join([".venv/bin/python", "benchmarks/bench_startup.py", *sys.argv[1:]]),
           "repeats": args.repeats, "median_s": med, "torch_imported": torch_imported,
           "import_torch_median_s": round(statistics.median(torch_s), 3)}
    lines = [f"# {doc['benchmark']}", "", f"`{doc['command']}`", "", f"{doc['date'][:10]}, {doc['machine']}; "
             f"medians of {args.repeats} fresh processes (one run for a command over {SLOW_S:.0f} s); "
             f"`import torch` alone: {doc['import_torch_median_s']} s.",
             "", "| command | " + " | ".join(trees) + " | torch imported |", "|---" * (len(trees) + 2) + "|"]
    for c in commands:
        cells = [f"{med[t][c]:.2f} s" for t in trees]
        lines.append(f"| `run.py {c}` | " + " | ".join(cells) + " | "
                     + ", ".join(f"{t}: {'yes' if torch_imported[t][c] else 'no'}" for t in trees) + " |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "startup.json").write_text(json.dumps(doc, indent=2) + "\n")
    (RESULTS / "startup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
