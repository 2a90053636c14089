"""Post-processing on a GPU: host syncs per batch, time, and the CPU form's detections (for gpu_checks.py).

Assumption: a CUDA device is present; ``torch.cuda.set_sync_debug_mode("warn")``
warns once for every operation that makes the host wait for the device, which
is what :func:`host_syncs` counts.
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Callable

import torch


def host_syncs(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``fn()``'s result and how many times it made the host wait for the GPU (torch's sync debug mode)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return out, sum("synchroniz" in str(w.message) for w in caught)


def nms_check(backend: Any, batch: tuple, reps: int = 5) -> dict:
    """Post-processing of ``batch`` ({S: uint8 [B,3,S,S]}, hw [B, 2]) on the GPU: syncs, ms, equality to the CPU."""
    from backends.ssd.postprocess import postprocess
    images, hw = batch
    n = hw.shape[0]
    with torch.inference_mode():
        inputs = {s: backend._normalize(images[s].to(backend.device), s, n) for s in backend.sizes}
        outputs = [backend.model(inputs[p.size], p.mask) for p in backend.detector.passes]
        boxes, scores = backend.detector.merge(outputs, hw.to(backend.device))
        c = backend.cfg
        run = lambda b, s, static=None: postprocess(b, s, c.score_threshold, c.nms_iou,   # noqa: E731
                                                    c.max_per_class, c.max_detections, static)
        run(boxes, scores)
        gpu, syncs = host_syncs(lambda: run(boxes, scores))
        t0 = time.perf_counter()
        for _ in range(reps):
            run(boxes, scores)
        torch.cuda.synchronize()
        ms = 1e3 * (time.perf_counter() - t0) / reps
        cpu = run(boxes.cpu(), scores.cpu(), static=False)
    same = len(cpu) == len(gpu) and all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu))
    return {"nms_batch": n, "nms_boxes_per_image": boxes.shape[1], "nms_ms_per_batch": ms,
            "nms_host_syncs": syncs, "nms_matches_cpu": same}
