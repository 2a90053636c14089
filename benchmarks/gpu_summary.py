"""The GPU suite's summary: each step's headline figures, read back from the results file it wrote.

A step's figures come only from a results file written after the step
started (a stale file is never quoted), or, for the tests, from pytest's last
line (so skipped CUDA tests show). benchmarks/gpu_suite.py runs the steps.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = {"offline": ("ratio_median", "loadgen_samples_per_s_median", "bare_samples_per_s_median", "mfu", "workers",
                    "eager_calls"),
        "server": ("server_peak_qps", "offline_samples_per_s", "ratio", "latency_bound_ms", "mfu_at_peak"),
        "singlestream": ("loadgen_p90_ms_median", "bare_p90_ms_median", "ratio_median"),
        "checks": ("workers", "warmed_batch_sizes", "captured_shapes_per_worker", "capture_streams", "eager_calls",
                   "workers_agree_byte_for_byte", "graph_memory_measured_gib", "graph_memory_estimate_gib",
                   "graph_memory_unshared_estimate_gib", "cuda_vs_cpu_fp32_agreement", "cuda_vs_cpu_max_score_diff",
                   "capture_measured_gib", "capture_vs_estimate", "host_slot_copy_done_at_return", "nms_ms_per_batch",
                   "nms_host_syncs", "nms_matches_cpu")}


def gpu_name() -> str:
    try:
        import torch
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA GPU"
    except Exception as e:  # noqa: BLE001 - the summary still gets written
        return f"unknown ({type(e).__name__}: {e})"


def torch_version() -> str:
    try:
        import torch
        return torch.__version__
    except Exception as e:  # noqa: BLE001
        return f"unknown ({type(e).__name__})"


def figures(name: str, results: str | None, started: float, tail: str = "", folder: Path = RESULTS) -> dict:
    """Headline figures of step ``name`` from ``results`` (if written after ``started``, epoch s) or its output."""
    kind = name.split("/")[-1]
    if kind == "tests":   # pytest's last line: how many passed, failed and skipped
        counts = [ln for ln in tail.splitlines() if " passed" in ln or " failed" in ln or " error" in ln]
        return {"pytest": counts[-1].strip("= ")} if counts else {}
    if results is None:
        return {}
    path = folder / results
    if not path.is_file() or path.stat().st_mtime < started:
        return {"missing": f"{results} was not written by this step"}
    doc = json.loads(path.read_text())
    if kind == "precision":
        return {r["option"]: {k: r.get(k) for k in ("ms_per_sample", "speedup", "map_delta_points", "agreement")}
                for r in doc.get("rows", [])}
    if kind == "profile":
        return {run: {"wall_ms": r["wall_ms_per_predict"], "samples_per_s": r["samples_per_s"],
                      "device_ms": r["device_ms_per_predict"],
                      "top": [(k["name"], k["share"]) for k in r["top"][:3]]} for run, r in doc["runs"].items()}
    return {k: doc.get(k) for k in KEYS.get(kind, ())}


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def figures_text(name: str, f: dict) -> str:
    """One table cell for step ``name``'s figures."""
    kind = name.split("/")[-1]
    if not f:
        return ""
    if "missing" in f:
        return f["missing"]
    if kind == "tests":
        return f["pytest"]
    if kind == "offline":
        return (f"Offline {f['loadgen_samples_per_s_median']:.1f} samples/s, bare {f['bare_samples_per_s_median']:.1f} "
                f"({f['workers']} workers both sides); efficiency {f['ratio_median']:.3f} (goal >= 0.95); "
                f"MFU {_pct(f['mfu'])}; eager calls {f['eager_calls'] or 'none'}")
    if kind == "server":
        return (f"peak {f['server_peak_qps']:.1f} QPS at p99 <= {f['latency_bound_ms']:.0f} ms; / Offline "
                f"{f['offline_samples_per_s']:.1f} = {f['ratio']:.3f} (goal >= 0.85); MFU {_pct(f['mfu_at_peak'])}")
    if kind == "singlestream":
        return (f"p90 {f['loadgen_p90_ms_median']:.2f} ms, bare {f['bare_p90_ms_median']:.2f} ms; "
                f"ratio {f['ratio_median']:.3f} (goal <= 1.05)")
    if kind == "checks":
        return (f"{f['workers']} workers, graphs {f['captured_shapes_per_worker']} on {f['capture_streams']} streams, "
                f"eager calls {f['eager_calls'] or 'none'}, concurrent workers identical: "
                f"{f['workers_agree_byte_for_byte']}; graph memory {f['graph_memory_measured_gib']:.2f} GiB measured, "
                f"{f['graph_memory_estimate_gib']:.2f} estimated, largest batch x{f.get('capture_vs_estimate') or 0:.2f}; "
                f"host slot free at return: {f.get('host_slot_copy_done_at_return')}; NMS "
                f"{f.get('nms_ms_per_batch') or 0:.2f} ms, {f.get('nms_host_syncs')} sync(s), same as CPU: "
                f"{f.get('nms_matches_cpu')}; CUDA vs CPU fp32 "
                f"{_pct(f['cuda_vs_cpu_fp32_agreement'])} twins, score diff <= {f['cuda_vs_cpu_max_score_diff']:.4f}")
    if kind == "profile":
        return "; ".join(f"{run}: {r['wall_ms']:.2f} ms/batch ({r['samples_per_s']:.0f}/s), device {r['device_ms']:.2f} "
                         f"ms, top: " + ", ".join(f"{n[:40]} {100 * s:.0f}%" for n, s in r["top"])
                         for run, r in f.items())
    if kind == "precision":
        return "; ".join(f"{k}: {v['ms_per_sample']:.2f} ms, mAP {v['map_delta_points']:+.2f}, "
                         f"agreement {v['agreement']:.3f}" for k, v in f.items())
    return json.dumps(f)


def summary_md(outcomes: Sequence[Any], doc: dict) -> str:
    """benchmarks/results/gpu_suite.md: the machine, then one row per step, then the end of each failed step."""
    lines = ["# CUDA path: tests and benchmarks", "",
             f"`python benchmarks/gpu_suite.py`, {doc['date']}, GPU: {doc['gpu']}, torch {doc['torch']}, "
             f"Python {doc['python']}; {doc['seconds']:.0f} s in all (budget {doc['budget_s']:.0f} s).", "",
             "| step | status | seconds | figures |", "|---|---|---|---|"]
    for o in outcomes:
        lines.append(f"| {o.name} | {o.status} | {o.seconds:.0f} | {figures_text(o.name, o.figures)} |")
    for o in outcomes:
        if o.status != "ok" and o.tail:
            lines += ["", f"## {o.name}: {o.status}", "", "```", o.tail.strip()[-1500:], "```"]
    return "\n".join(lines) + "\n"
