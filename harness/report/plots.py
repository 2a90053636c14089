"""Pictures of a run: detections drawn on images, and a latency histogram.

Both read what the run already wrote (COCO results in original-pixel
``[x, y, w, h]``, i.e. COCO's top-left-width-height format, and per-sample
latencies in seconds), so they can be redrawn for any earlier run. Matplotlib
runs headless (Agg); nothing here is on the timed path.

Percentiles follow LoadGen's definition (loadgen/results.cc,
``PerformanceSummary::ProcessLatencies``): sort the latencies and take the
one at index ``floor(count * p / 100)``, an actual sample, never an
interpolation between two (``numpy.percentile``'s default). With batches,
many samples complete together and the two definitions differ by up to a
batch's time. A Server run's picture also draws its latency bound
(``effective_target_latency_ns`` in LoadGen's detail log).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from harness.results.loadgen_log import read_mllog  # noqa: E402

_COLOURS = plt.get_cmap("tab10").colors


def draw_detections(images: Sequence[tuple[str | Path, int]], results: Sequence[dict],
                    category_names: dict[int, str], out_png: str | Path,
                    score_min: float = 0.3, columns: int = 3) -> Path:
    """Draw the detections of a few images into one PNG grid.

    Args:
        images: (image path, COCO image id) pairs, in display order.
        results: COCO results, each {image_id, category_id, bbox: [x, y, w, h] original pixels, score}.
        category_names: COCO category id -> name.
        out_png: where to write the picture.
        score_min: detections below this score are not drawn.
        columns: images per row.
    """
    by_image: dict[int, list[dict]] = {}
    for r in results:
        if r["score"] >= score_min:
            by_image.setdefault(int(r["image_id"]), []).append(r)
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 4.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (path, image_id) in zip(axes.flat, images):
        with Image.open(path) as im:
            ax.imshow(np.asarray(im.convert("RGB")))
        dets = sorted(by_image.get(int(image_id), []), key=lambda r: -r["score"])
        for r in dets:
            x, y, w, h = r["bbox"]
            colour = _COLOURS[int(r["category_id"]) % len(_COLOURS)]
            ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, edgecolor=colour, linewidth=1.8))
            name = category_names.get(int(r["category_id"]), str(r["category_id"]))
            ax.text(x, y - 2, f"{name} {r['score']:.2f}", fontsize=7, color="white",
                    bbox=dict(facecolor=colour, edgecolor="none", pad=1, alpha=0.85))
        ax.set_title(f"{Path(path).name}: {len(dets)} detections >= {score_min}", fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def loadgen_percentile(values: Sequence[float], percent: float, *, ordered: bool = False) -> float:
    """The ``percent`` percentile (0 <= percent < 100) as LoadGen computes it: sorted[floor(n * percent / 100)].

    ``ordered``: ``values`` is already sorted ascending (one sort for several percentiles of the same values).
    """
    values = values if ordered else np.sort(np.asarray(values, dtype=np.float64))
    if len(values) == 0:
        raise ValueError("no values")
    return float(values[min(len(values) - 1, int(len(values) * percent / 100))])


def latency_marks(latencies_s: Sequence[float], percentiles: Sequence[float] = (50, 90, 99),
                  bound_ms: float | None = None, bound_percentile: float | None = None) -> list[tuple[str, float]]:
    """The vertical lines of a latency histogram: (label, ms) per percentile (LoadGen's definition), then the bound."""
    ms = np.sort(np.asarray(latencies_s, dtype=np.float64) * 1e3)
    marks = []
    for p in percentiles:
        value = loadgen_percentile(ms, p, ordered=True)
        marks.append((f"p{p:g} = {value:.1f} ms", value))
    if bound_ms is not None:
        at = f" at p{bound_percentile:g}" if bound_percentile is not None else ""
        over = int(np.count_nonzero(ms > bound_ms))
        marks.append((f"bound {bound_ms:g} ms{at} ({over} of {len(ms)} over)", bound_ms))
    return marks


def latency_histogram(latencies_s: Sequence[float], out_png: str | Path, title: str,
                      percentiles: Sequence[float] = (50, 90, 99), bound_ms: float | None = None,
                      bound_percentile: float | None = None) -> Path:
    """Histogram of per-sample latencies (seconds, drawn in ms) with percentile lines and, if given, the bound."""
    ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError(f"no latencies to plot for {out_png}")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(ms, bins=min(60, max(10, ms.size // 20)), color="#4477aa")
    styles = ("--", "-.", ":", (0, (1, 3)))
    for k, (label, value) in enumerate(latency_marks(latencies_s, percentiles, bound_ms, bound_percentile)):
        is_bound = bound_ms is not None and k == len(percentiles)
        ax.axvline(value, color="#222222" if is_bound else "#cc3311", linewidth=2 if is_bound else 1,
                   linestyle="-" if is_bound else styles[k % len(styles)], label=label)
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("samples")
    ax.set_title(f"{title} ({ms.size} samples)")
    ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def run_latency_histogram(run_dir: str | Path, latencies_s: Sequence[float], out_png: str | Path,
                          title: str) -> Path:
    """:func:`latency_histogram` of one LoadGen run, with the Server bound read from its detail log."""
    bound_ms = bound_percentile = None
    try:
        log = read_mllog(Path(run_dir) / "mlperf_log_detail.txt")
    except OSError:
        log = {}
    if log.get("effective_scenario") == "Server" and log.get("effective_target_latency_ns"):
        bound_ms = float(log["effective_target_latency_ns"]) / 1e6
        if log.get("effective_target_latency_percentile") is not None:
            bound_percentile = 100 * float(log["effective_target_latency_percentile"])
    return latency_histogram(latencies_s, out_png, title, bound_ms=bound_ms, bound_percentile=bound_percentile)
