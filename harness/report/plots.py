"""Pictures of a run: detections drawn on images, and a latency histogram.

Both read what the run already wrote (COCO results in original-pixel
``[x, y, w, h]``, i.e. COCO's top-left-width-height format, and per-sample
latencies in seconds), so they can be redrawn for any earlier run. Matplotlib
runs headless (Agg); nothing here is on the timed path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

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


def latency_histogram(latencies_s: Sequence[float], out_png: str | Path, title: str,
                      percentiles: Sequence[float] = (50, 90, 99)) -> Path:
    """Histogram of per-sample latencies (seconds, drawn in ms) with percentile lines."""
    ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError(f"no latencies to plot for {out_png}")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(ms, bins=min(60, max(10, ms.size // 20)), color="#4477aa")
    for p, style in zip(percentiles, ("--", "-.", ":")):
        v = float(np.percentile(ms, p))
        ax.axvline(v, color="#cc3311", linestyle=style, label=f"p{p:g} = {v:.1f} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("samples")
    ax.set_title(f"{title} ({ms.size} samples)")
    ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
