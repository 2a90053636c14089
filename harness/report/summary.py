"""The short summary printed at the end of a run, from its :class:`~harness.results.result_types.RunResult`.

LoadGen's VALID/INVALID is printed only for a run that finished with a model;
any other run prints its label in its place (FAILED, SIMULATED), as its
``run_status.json`` and ``report.md`` do. The Markdown report written into the
run folders is harness/report/markdown.py.
"""
from __future__ import annotations

from harness.accuracy.coco import STAT_NAMES
from harness.results.result_types import RunResult
from ground.errors import INTERRUPTS

SHOWN_PERCENTILES = ("50.00", "90.00", "99.00")


def early_stopping_label(scenario: str) -> str:
    """What LoadGen's early-stopping latency estimate is for ``scenario``: its official result."""
    pct = "p99" if scenario == "MultiStream" else "p90"
    return f"result ({pct} early-stopping estimate)"


def format_summary(result: RunResult) -> str:
    simulated = ", SIMULATED: no model ran, the figures measure the harness" if result.simulated else ""
    lines = [f"== {result.scenario} {result.mode} (backend {result.backend}{simulated}) =="]
    for r in result.runs + result.audits:
        lines.append(f"[{r.mode}] {r.out_dir}")
        if r.label != "FINISHED":
            lines.append(f"  status: {r.label}" + "".join(f"; {p}" for p in r.problems()))
        if r.mode != "accuracy":
            why = f" ({'; '.join(r.loadgen.reasons)})" if r.loadgen.reasons else ""
            verdict = r.loadgen.validity if r.label == "FINISHED" else f"{r.label} (LoadGen: {r.loadgen.validity})"
            lines.append(f"  result: {verdict}{why}")
            if r.loadgen.samples_per_s is not None:
                lines.append(f"  samples/s: {r.loadgen.samples_per_s:.1f}")
            lat = [f"p{p[:2]} {r.loadgen.latency_ns[p] / 1e6:.3f} ms" for p in SHOWN_PERCENTILES
                   if p in r.loadgen.latency_ns]
            if lat:
                lines.append("  latency: " + ", ".join(lat))
            if r.loadgen.early_stopping_ns:
                lines.append(f"  {early_stopping_label(result.scenario)}: {r.loadgen.early_stopping_ns / 1e6:.3f} ms")
            if r.loadgen.peak_qps is not None:
                lines.append(f"  peak Server QPS found: {r.loadgen.peak_qps:.1f}")
        if r.accuracy is not None and (r.accuracy.incomplete or r.accuracy.not_computed):
            lines.append(f"  {r.accuracy.headline()}")      # says INCOMPLETE, or why there is no mAP
        elif r.accuracy is not None:
            lines.append(f"  mAP={100.0 * r.accuracy.map:.3f}% ({STAT_NAMES[0]}) over "
                         f"{r.accuracy.images_evaluated} images")
            skipped = r.accuracy.skipped
            if skipped:   # their pixels are zeros: their objects count as missed
                lines.append(f"  {len(skipped)} image(s) unreadable when the cache was made, evaluated as blank "
                             f"(their objects count as missed): {', '.join(skipped[:5])}"
                             + (" ..." if len(skipped) > 5 else ""))
        if r.accuracy_error:
            lines.append(f"  accuracy: not computed: {r.accuracy_error}")
        for e in r.loadgen.errors[:5]:
            lines.append(f"  LoadGen error: {e}")
        lines.append(f"  failed samples: {len(r.failures)}")
        for f in r.failures[:5]:
            lines.append(f"    sample {f.index} ({f.stage}): {f.error}")
        if len(r.failures) > 5:
            lines.append(f"    ... {len(r.failures) - 5} more (see harness.log)")
        if r.oom_batches:
            lines.append(f"  {r.oom_batches} batch(es) ran out of device memory and were retried per image; "
                         "see harness.log for the setting to lower")
        if r.recomputed_batches:
            lines.append(f"  {r.recomputed_batches} batch(es) failed and were computed again (on another device, "
                         "or one sample at a time); see harness.log")
        if r.lost_workers:
            lines.append(f"  workers lost during the run: {len(r.lost_workers)} of {r.workers} (their batches "
                         "went to the others)")
            lines += [f"    {w}" for w in r.lost_workers[:5]]
        if r.worker_error:
            lines.append(f"  RUN ENDED EARLY: {r.worker_error}")
        if r.audit is not None:
            lines += [f"  {line}" for line in r.audit.lines()]
    if result.audits:
        failed = result.failed_audits
        lines.append(f"COMPLIANCE: FAIL ({', '.join(failed)})" if failed else
                     f"COMPLIANCE: PASS ({', '.join(a.mode for a in result.audits)})")
    if result.error:
        lines.append(f"ERROR: {result.error}")
    if result.interrupted:
        lines.append(f"INTERRUPTED: the run was {INTERRUPTS[result.interrupt_code]} before LoadGen finished; "
                     "the logs above are partial")
    lines.append(f"exit status {result.exit_code}")
    return "\n".join(lines)
