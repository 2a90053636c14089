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


def predict_one_by_one(backend: "Backend", images: Mapping[int, torch.Tensor], image_hw: torch.Tensor
                       ) -> Detections:
    """``backend.predict`` run on each image of the batch alone, in batch-of-one shapes every time, so an
    image's result never depends on its batch (CPU kernels pick their blocking from the batch size).
    Each slice keeps a staged batch's copy event (:func:`slice_batch`)."""
    out: Detections = []
    for i in range(int(image_hw.shape[0])):
        out.extend(backend.predict(*slice_batch(images, image_hw, i, i + 1)))
    return out


class WorkerLost(RuntimeError):
    """This worker (its process, its host, or a call past its deadline) can compute nothing more.

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


class DeviceLost(WorkerLost):
    """The device itself can compute nothing more: every worker on it is lost at once.

    The harness raises it in place of an error that :func:`poisons_device` recognises.
    """


# Errors after which CUDA says "the process is in an inconsistent state and any further CUDA work will
# return the same error" (CUDA runtime API, cudaError_t 214, 700, 710, 714-719): the context is
# poisoned for every worker of that GPU. Matched in lower case against the exception's message.
STICKY_DEVICE_ERRORS = (
    "an illegal memory access was encountered",     # cudaErrorIllegalAddress (700)
    "device-side assert triggered",                 # cudaErrorAssert (710)
    "hardware stack error",                         # cudaErrorHardwareStackError (714)
    "an illegal instruction was encountered",       # cudaErrorIllegalInstruction (715)
    "misaligned address",                           # cudaErrorMisalignedAddress (716)
    "operation not supported on global/shared address space",   # cudaErrorInvalidAddressSpace (717)
    "invalid program counter",                      # cudaErrorInvalidPc (718)
    "unspecified launch failure",                   # cudaErrorLaunchFailure (719)
    "uncorrectable ecc error encountered",          # cudaErrorECCUncorrectable (214)
)


def poisons_device(e: BaseException) -> bool:
    """Whether ``e`` says its device is lost for good: a sticky CUDA error (:data:`STICKY_DEVICE_ERRORS`).

    Out of memory is not one (the next, smaller batch can run), nor is any other error: a bad
    sample raises too, and only a device whose batches fail again and again is retired for it.
    """
    if isinstance(e, DeviceLost):
        return True
    if not isinstance(e, RuntimeError) or isinstance(e, WorkerLost):
        return False
    message = str(e).lower()
    return any(sticky in message for sticky in STICKY_DEVICE_ERRORS)


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is the device running out of memory (``torch.cuda.OutOfMemoryError``, or any
    RuntimeError saying "out of memory"): a batch too large, not a device lost."""
    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(e, oom) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def device_of(worker: object) -> str | None:
    """The device ``worker`` computes on, the unit that fails as a whole; None: the worker alone.

    Its ``device_id`` when it has one (a simulated device, a remote actor); else its ``device``
    when that names one accelerator ("cuda:0": the CUDA path's workers of one GPU share it);
    else None (a CPU worker: nothing it shares fails with it).
    """
    given = getattr(worker, "device_id", None)
    if given is not None:
        return str(given)
    name = str(getattr(worker, "device", "") or "")
    return name if ":" in name and not name.startswith("cpu") else None
