"""Host-device transfers of one CUDA worker: staging a batch on the copy stream, the detections back.

Rules (PyTorch's CUDA semantics: streams, events, pinned memory):

- ``stage`` copies a batch's uint8 images to the device on the worker's copy
  stream and records an event at the copy's end; ``predict`` makes its compute
  stream wait for that event only (not for the copy stream's later work), and
  marks the staged tensors as used on the compute stream (``record_stream``),
  so the allocator never hands their memory to the next copy too early.
- A copy from pinned host memory is asynchronous: the host buffer (the
  pipeline's slot) must not be written until the copy has read it. The
  pipeline hands a slot back to its loader as soon as ``predict`` returns, so
  :func:`predict_on_stream` records an event once the inputs are on the device
  and waits for it before returning. This does not rely on the copy of the
  detections back to the host being blocking (today it is: one ``.cpu()`` per
  batch, after which the wait costs nothing).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch


class StagedImages(dict):
    """{S: uint8 CUDA Tensor[B, 3, S, S]} copied on a backend's copy stream; ``ready`` marks the copy's end."""

    ready: Any = None


def stage(cuda: Any, copy_stream: Any, device: torch.device, images: Mapping[int, torch.Tensor],
          image_hw: torch.Tensor) -> tuple[StagedImages, torch.Tensor]:
    """Start copying ``images`` ({S: uint8 Tensor[B, 3, S, S]}) and ``image_hw`` (Tensor[B, 2]) on ``copy_stream``."""
    staged = StagedImages()
    with cuda.stream(copy_stream):
        for s, t in images.items():
            staged[s] = t.to(device, non_blocking=True)
        hw = image_hw.to(device, non_blocking=True)
        staged.ready = cuda.Event()
        staged.ready.record(copy_stream)
    return staged, hw


def predict_on_stream(cuda: Any, stream: Any, device: torch.device, images: Mapping[int, torch.Tensor],
                      image_hw: torch.Tensor, to_device: Callable[[Mapping[int, torch.Tensor]], dict],
                      detect: Callable[[dict, torch.Tensor], list[torch.Tensor]],
                      to_host: Callable[[torch.Tensor], torch.Tensor] = torch.Tensor.cpu) -> list[torch.Tensor]:
    """Run ``detect(to_device(images), hw)`` on ``stream``; the detections (Tensor[K_i, 6] each) on the host.

    ``images`` may be staged (:func:`stage`) or host tensors; ``to_device`` copies and normalizes them on
    ``stream``. Returns only once the host inputs have been read (see the module's rules).
    """
    with cuda.stream(stream):
        ready = getattr(images, "ready", None)
        if ready is not None:                      # staged on the copy stream: wait for that copy only
            stream.wait_event(ready)
            for t in (*images.values(), image_hw):
                if t.is_cuda:
                    t.record_stream(stream)
        inputs = to_device(images)
        hw = image_hw.to(device, non_blocking=True)
        inputs_read = cuda.Event()
        inputs_read.record(stream)
        dets = detect(inputs, hw)
        counts = [d.shape[0] for d in dets]
        out = list(to_host(torch.cat(dets)).split(counts))   # one device-to-host copy per batch
        inputs_read.synchronize()                  # the host slot may be reused once this returns
        return out
