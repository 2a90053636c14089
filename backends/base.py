"""The backend interface the harness talks to: load, warm up, predict a batch.

Inputs are the QSL's preprocessed samples: for each input size S the model
runs at, a uint8 tensor ``[B, 3, S, S]`` (RGB, resized, not normalized), plus
the original image sizes ``[B, 2]`` as (height, width) in pixels, which the
two-scale area filter needs. Normalization happens inside the backend, on its
device.

Output, per image, one fp32 CPU tensor ``[K, 6]``:
``(x1, y1, x2, y2, score, label)`` with the box in xyxy format normalized to
[0, 1] of the image and the label a class index 1..num_classes-1. ``K`` may be
0. The result for an image never depends on the other images in its batch.
"""
from __future__ import annotations

import copy
from typing import Mapping, Protocol, Sequence

import torch

Detections = list[torch.Tensor]  # per image: Tensor[K, 6] (x1, y1, x2, y2, score, label), fp32, CPU

# Compute workers per GPU on the CUDA path (own streams and graphs, shared weights), so one worker's
# post-processing overlaps another's network; a simulated device gets as many (backends/simulated/backend.py).
CUDA_WORKERS_PER_GPU = 2


def check_sizes(images: Mapping[int, torch.Tensor], sizes: Sequence[int]) -> None:
    """Raise ValueError unless ``images`` holds a batch for every input size in ``sizes``."""
    missing = [s for s in sizes if s not in images]
    if missing:
        raise ValueError(f"no images given for size(s) {missing}; this model needs sizes {list(sizes)}")


def slice_batch(images: Mapping[int, torch.Tensor], image_hw: torch.Tensor, start: int, stop: int
                ) -> tuple[Mapping[int, torch.Tensor], torch.Tensor]:
    """Rows ``start:stop`` of a batch: ({S: Tensor[stop - start, 3, S, S]}, Tensor[stop - start, 2]).

    The mapping is a shallow copy of ``images``, so it keeps its type and attributes: a batch a
    backend staged on its device (``stage``) keeps the event its copy records, which ``predict``
    waits for before reading the images.
    """
    part = copy.copy(images)
    for s, t in images.items():
        part[s] = t[start:stop]
    return part, image_hw[start:stop]


class WorkerLost(RuntimeError):
    """This worker (its device, its process or its host) can compute nothing more.

    Raised by a worker's ``predict`` or ``stage``. The harness retires the worker and gives its
    batch to another one; a sample fails only when no worker is left to run it.
    """


class Backend(Protocol):
    name: str
    sizes: tuple[int, ...]  # the input sizes it needs from the QSL, in pass order
    # True for a backend that runs no detector (null, simulated): its results measure the harness,
    # and nothing it leaves on disk may read as a model's result.
    simulated: bool

    def load(self) -> None:
        """Build the model, load weights, move to the device. Raises with a clear message on bad input."""

    def warmup(self) -> None:
        """Run a few batches so the first timed query pays no one-off costs."""

    def predict(self, images: Mapping[int, torch.Tensor], image_hw: torch.Tensor) -> Detections:
        """Detect objects in one batch.

        Args:
            images: {S: uint8 Tensor[B, 3, S, S]} for every S in ``sizes``.
            image_hw: Tensor[B, 2], original (height, width) in pixels.
        """
