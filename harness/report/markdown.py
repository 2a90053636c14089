"""A human summary (Markdown) of a scenario's runs, rebuilt from the files on disk.

    python run.py report DIR     (DIR: a results root, a scenario folder or one run folder)

``report.md`` in ``<output>/<system>/ssd-resnet34/<scenario>/`` covers every
run found there: how it ended and what it ran on (``run_status.json``), the
resolved settings (``config.json``, with the values actually in force beside
the requested ones) and LoadGen's effective ones, VALID/INVALID with LoadGen's
reasons (only for a run that finished with a model: any other run shows its
label, INTERRUPTED, INCOMPLETE, FAILED, SIMULATED or RUNNING, in their
place), throughput, latency
percentiles, mAP with the 12 COCO statistics (``accuracy.txt``), failed
samples (``run_record.json``), the rules profile the runs followed
(``run.rules``, harness/settings/rules.py), the audits' verdicts (``verify_*.txt``),
and links to the pictures: a latency histogram per timed run (drawn here
from ``latencies_s.npy``) and the demo's ``detections.png`` /
``latency_<scenario>.png`` when the output root holds them. Everything is
read from disk, so the report of any earlier run can be rebuilt. ``run.py
report DIR`` touches only scenario folders with runs this harness made
(harness/results/layout.py ``find_runs``).
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from harness.compliance.verdicts import verdict_line, verify_lines
from harness.report.summary import early_stopping_label
from harness.results.environment import environment_line
from harness.results.layout import (
    DETAIL_LOG,
    LATENCIES_NAME,
    LATENCY_PNG,
    RUN_DIRS,
    VERIFY_ACCURACY,
    VERIFY_PERFORMANCE,
    is_run_folder,
)
from harness.results.loadgen_log import read_detail_log, read_mllog
from harness.results.run_record import read_run_record
from harness.results.run_status import RunState, audit_is_stale, run_state
from harness.settings.rules import AUDITS, RULES
from ground.files import write_text_atomic

REPORT_NAME = "report.md"
PERCENTILES = ("50.00", "90.00", "95.00", "97.00", "99.00", "99.90")
EFFECTIVE_KEYS = ("effective_min_duration_ms", "effective_min_query_count", "effective_qsl_rng_seed",
                  "effective_sample_index_rng_seed", "effective_schedule_rng_seed",
                  "effective_target_latency_ns", "effective_target_latency_percentile",
                  "effective_samples_per_query", "effective_target_qps", "effective_performance_sample_count",
                  "effective_accuracy_log_sampling_target", "effective_performance_issue_same")
_STAT = re.compile(r"^(A[PR] @\[.*\]) = ([-\d.]+)$")


def write_report(folder: str | Path) -> Path:
    """Write ``report.md`` (and missing latency pictures) into the scenario folder ``folder``."""
    folder = Path(folder)
    out = folder / REPORT_NAME
    write_text_atomic(out, build_report(folder))
    return out


def build_report(folder: Path) -> str:
    runs = [(mode, folder.joinpath(*parts)) for mode, parts in RUN_DIRS.items()
            if is_run_folder(folder.joinpath(*parts))]
    states = {mode: run_state(d) for mode, d in runs}
    md = [f"# {folder.name}: {folder.parent.parent.name} / {folder.parent.name}", ""]
    configured = [(mode, d / "config.json") for mode, d in runs if (d / "config.json").is_file()]
    latest = max(configured, key=lambda c: c[1].stat().st_mtime_ns, default=None)   # the latest run's
    config, status = (latest[1], states[latest[0]].status) if latest else (None, None)
    md += _status_table(runs, states, folder)
    md += _settings(config, status, runs, folder)
    for mode, run_dir in runs:
        md += _run_section(mode, run_dir, folder, states[mode])
    md += _pictures(folder)
    md.append(f"_Rebuild with `python run.py report {shlex.quote(str(folder))}`._")
    return "\n".join(md) + "\n"


def _status_table(runs: list[tuple[str, Path]], states: dict[str, RunState], folder: Path) -> list[str]:
    """One row per run: how it ended. Only FINISHED runs are results; the others say why not."""
    if not runs:
        return []
    md = ["## Runs", "", "| run | status | started | why |", "|---|---|---|---|"]
    for mode, run_dir in runs:
        state = states[mode]
        started = (state.status or {}).get("started") or "?"
        md.append(f"| `{run_dir.relative_to(folder)}/` | **{state.label}** | {started} | {_cell(state.reason)} |")
    return md + [""]


# Settings whose requested value (config.json) may differ from the one in force (run_status.json).
_EFFECTIVE = {"run": ("device", "threads"), "model": ("precision", "cuda_graphs", "compile")}


def _in_force(section: str, key: str, value: object, env: dict) -> str:
    """``key=value``, with the value actually in force when the run recorded a different one."""
    if key in _EFFECTIVE.get(section, ()) and env.get(key) is not None and env[key] != value:
        used = env[key]
        if key == "threads" and not value:
            return f"threads={used} (torch's default)"
        return f"{key}={used} (requested {value})"
    return f"{key}={value}"


def _settings(config: Path | None, status: dict | None, runs: list[tuple[str, Path]], folder: Path) -> list[str]:
    """``config``: the latest run's config.json; ``status``: that run's run_status.json."""
    md = ["## Settings", ""]
    if config is not None:
        doc = json.loads(config.read_text())
        env = ((status or {}).get("environment")) or {}
        md.append(f"_Of the latest run (`{config.parent.relative_to(folder)}/`); each run's own are in its section._")
        md.append("")
        rules = RULES.get(str(doc.get("run", {}).get("rules", "none")))
        if rules is not None:
            md.append(f"- **rules**: MLPerf Inference {rules.name} ({rules.source})" if rules.checker_version else
                      f"- **rules**: none ({rules.source}; MLPerf's checkers reject these seeds)")
        for section in ("model", "data", "run"):
            items = ", ".join(_in_force(section, k, v, env) for k, v in doc.get(section, {}).items()
                              if v is not None)
            md.append(f"- **{section}**: {items}")
        if env:
            md.append(f"- **environment**: {environment_line(env)}")
    logged = [(m, d) for m, d in runs if (d / DETAIL_LOG).is_file()]
    perf = next((d for m, d in logged if m == "performance"), logged[0][1] if logged else None)
    if perf is not None:
        values = read_mllog(perf / "mlperf_log_detail.txt")
        eff = ", ".join(f"{k[len('effective_'):]}={values[k]}" for k in EFFECTIVE_KEYS if k in values)
        md.append(f"- **LoadGen (effective, {perf.name if perf.name != 'run_1' else 'performance'} run)**: {eff}")
    return md + [""]


def _run_section(mode: str, run_dir: Path, folder: Path, state: RunState) -> list[str]:
    rel = run_dir.relative_to(folder)
    md = [f"## {mode} (`{rel}/`)", "", f"- Status: **{state.line()}**"]
    env = (state.status or {}).get("environment")
    if env:
        md.append(f"- Ran on: {environment_line(env)}")
    lg = read_detail_log(run_dir / DETAIL_LOG)
    if mode != "accuracy":
        if state.is_result:
            why = "".join(f"\n  - {r}" for r in lg.reasons)
            md.append(f"- Result: **{lg.validity}**{why}")
        else:
            md.append(f"- Result: **{state.label}**, not a result (LoadGen's own verdict on the logs: "
                      f"{lg.validity}; the figures below are of this {state.label.lower()} run)")
        if lg.samples_per_s is not None:
            md.append(f"- Throughput: {lg.samples_per_s:.2f} samples/s")
        if lg.early_stopping_ns:
            md.append(f"- Latency {early_stopping_label(folder.name)}: **{lg.early_stopping_ns / 1e6:.3f} ms**")
        if lg.peak_qps is not None:
            md.append(f"- Peak Server QPS found: **{lg.peak_qps:.1f}**")
        lat = [(p, lg.latency_ns[p]) for p in ("min", "mean", *PERCENTILES, "max") if p in lg.latency_ns]
        if lat:
            md += ["", "| latency | " + " | ".join(p if p in ("min", "mean", "max") else f"p{p.rstrip('0').rstrip('.')}"
                                                   for p, _ in lat) + " |",
                   "|---" * (len(lat) + 1) + "|", "| ms | " + " | ".join(f"{v / 1e6:.3f}" for _, v in lat) + " |", ""]
    md += _accuracy(run_dir / "accuracy.txt", state)
    record = read_run_record(run_dir)
    if record is not None:
        md.append(f"- Samples issued: {record['issued']}, failed: {record['failed']}, {record['seconds']:.1f} s")
        for f in record["failures"][:10]:
            md.append(f"  - sample {f['index']} ({f['stage']}): {f['error']}")
        if record.get("worker_error"):
            md.append(f"- **Run ended early**: {record['worker_error']}")
        if record.get("lost_workers"):
            md.append(f"- **workers lost during the run: {len(record['lost_workers'])} of {record['workers']}** "
                      "(their batches went to the others)")
            md += [f"  - {w}" for w in record["lost_workers"][:10]]
        if record.get("recomputed_batches"):
            md.append(f"- {record['recomputed_batches']} batches failed and were computed again (on another "
                      "device, or one sample at a time)")
        if record.get("oom_batches"):
            md.append(f"- {record['oom_batches']} batches ran out of device memory and were retried per image")
        if record.get("accuracy_error"):
            md.append(f"- Accuracy not computed: {record['accuracy_error']}")
    for e in lg.errors[:5]:
        md.append(f"- LoadGen error: {e}")
    own = run_dir / "config.json"
    if own.is_file():
        items = json.loads(own.read_text()).get("run", {})
        md.append("- Run settings: " + ", ".join(_in_force("run", k, v, env or {}) for k, v in items.items()
                                                 if v is not None))
    if mode in AUDITS:
        md += _verdicts(run_dir)
        if audit_is_stale(folder, mode):
            md.append("- **Stale**: the performance run is newer than this audit, whose verdict compared "
                      "against an earlier one; run `--mode submission` again to audit the current run")
    png = _latency_picture(run_dir, f"{folder.name} {mode}")
    if png is not None:
        md += ["", f"![latency histogram]({png.relative_to(folder)})"]
    return md + [""]


def _accuracy(path: Path, state: RunState) -> list[str]:
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    stats = [m.groups() for m in map(_STAT.match, lines) if m]
    if not lines:
        md = ["- Accuracy: (empty accuracy.txt)"]
    elif state.is_result:
        md = [f"- Accuracy: **{lines[0]}**"]
    else:
        md = [f"- Accuracy: **{state.label}**, not a result ({lines[0]} of this {state.label.lower()} run)"]
    if stats:
        md += ["", "| COCO statistic | value |", "|---|---|"] + [f"| {_cell(n)} | {v} |" for n, v in stats] + [""]
    md += [f"- {line}" for line in lines if line and not _STAT.match(line) and line != lines[0]]
    return md


def _cell(text: str) -> str:
    """Table-cell text: COCO's statistic names contain '|', which would split the cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _verdicts(audit: Path) -> list[str]:
    md = []
    for name in (VERIFY_ACCURACY, VERIFY_PERFORMANCE):
        lines = verify_lines(audit / name)
        if lines is not None:
            md.append(f"- `{name}`: **{verdict_line(lines)}**")
    return md


def _latency_picture(run_dir: Path, title: str) -> Path | None:
    data, png = run_dir / LATENCIES_NAME, run_dir / LATENCY_PNG
    if not data.is_file():
        return None
    if not png.is_file() or png.stat().st_mtime < data.stat().st_mtime:
        import numpy as np

        from harness.report.plots import run_latency_histogram
        latencies = np.load(data)
        if latencies.size == 0:
            return None
        run_latency_histogram(run_dir, latencies, png, f"{title}, per-sample latency")
    return png


def _pictures(folder: Path) -> list[str]:
    root = folder.parent.parent.parent          # <output> of <output>/<system>/<model>/<scenario>
    found = [p for p in (root / "detections.png", root / f"latency_{folder.name}.png") if p.is_file()]
    if not found:
        return []
    return ["## Pictures", ""] + [f"![{p.stem}](../../../{p.name})" for p in found] + [""]
