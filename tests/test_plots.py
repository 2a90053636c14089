"""The latency picture tells the numbers LoadGen tells: its percentile definition, and the Server bound."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import harness.report.plots as plots


def test_percentiles_are_loadgens_a_real_sample_not_an_interpolation():
    # Batches of 8 samples completing together (as in Offline): 64 latencies in 8 steps of 1 s.
    latencies = np.repeat(np.arange(1, 9, dtype=float), 8)
    # LoadGen: sorted[floor(64 * 0.50)] = sorted[32] = 5 s; sorted[floor(64 * 0.90)] = sorted[57] = 8 s;
    # sorted[floor(64 * 0.99)] = sorted[63] = 8 s. numpy's default interpolates: p50 = 4.5 s.
    assert plots.loadgen_percentile(latencies, 50) == 5.0
    assert plots.loadgen_percentile(latencies, 90) == 8.0 and plots.loadgen_percentile(latencies, 99) == 8.0
    marks = plots.latency_marks(latencies)
    assert [v for _, v in marks] == [5000.0, 8000.0, 8000.0]
    assert marks[0][0] == "p50 = 5000.0 ms"
    # Ten samples 1..10: LoadGen's p50 is sorted[5] = 6, p90 sorted[9] = 10.
    assert [plots.loadgen_percentile(range(1, 11), p) for p in (50, 90)] == [6.0, 10.0]


def _detail_log(folder: Path, scenario: str, bound_ns: int = 100_000_000) -> None:
    folder.mkdir(parents=True)
    rows = [("effective_scenario", scenario), ("effective_target_latency_ns", bound_ns),
            ("effective_target_latency_percentile", 0.99)]
    (folder / "mlperf_log_detail.txt").write_text("".join(
        ":::MLLOG " + json.dumps({"key": k, "value": v, "metadata": {"is_error": False}}) + "\n" for k, v in rows))


@pytest.mark.parametrize("scenario, bound", [("Server", (100.0, 99.0)), ("Offline", (None, None))])
def test_a_server_picture_draws_its_latency_bound(tmp_path, monkeypatch, scenario, bound):
    run_dir = tmp_path / scenario
    _detail_log(run_dir, scenario)
    drawn = {}
    real = plots.latency_histogram

    def spy(latencies_s, out_png, title, **kw):
        drawn.update(kw)
        return real(latencies_s, out_png, title, **kw)
    monkeypatch.setattr(plots, "latency_histogram", spy)
    latencies = [0.05] * 95 + [0.2] * 5
    png = plots.run_latency_histogram(run_dir, latencies, run_dir / "latency.png", "Server performance")
    assert png.stat().st_size > 0
    assert (drawn.get("bound_ms"), drawn.get("bound_percentile")) == bound
    if bound[0]:
        assert plots.latency_marks(latencies, bound_ms=100.0, bound_percentile=99.0)[-1] == \
            ("bound 100 ms at p99 (5 of 100 over)", 100.0)


def test_the_report_picture_of_a_server_run_has_the_bound(tmp_path, monkeypatch):
    from harness.report.markdown import _latency_picture
    from harness.results.run_record import LATENCIES_NAME
    run_dir = tmp_path / "Server" / "performance" / "run_1"
    _detail_log(run_dir, "Server", 50_000_000)
    np.save(run_dir / LATENCIES_NAME, np.full(20, 0.01, dtype=np.float32))
    bounds = []
    monkeypatch.setattr(plots, "latency_histogram", lambda *a, **kw: bounds.append(kw.get("bound_ms")))
    _latency_picture(run_dir, "Server performance")
    assert bounds == [50.0]
