"""Device timings for the simulated accelerator, named after the GPU and model they stand for.

A profile says how long one simulated device holds a batch of ``b`` samples:
``fixed_ms + per_sample_ms * b``. It is a measuring instrument for the
harness (can it keep N devices of this speed busy, and answer Server queries
inside the bound?), not a prediction of what the model does on that GPU.

Derivation of the per-sample time (FLOPs = 2 x multiply-accumulates, counted
by ``benchmarks/flops.py`` for SSD-ResNet34, 81 classes, every feature map,
both passes of the two-scale method; ``tests/test_simulated.py`` recounts
them):

    H100 SXM dense fp16 tensor-core peak       989 TFLOP/s (NVIDIA data sheet)
    assumed model FLOP utilization              40 %  -> 395.6 TFLOP/s
    SSD-ResNet34 300 + 600 per sample          155.82 GFLOP
        155.82e9 / 395.6e12 s                =   0.394 ms per sample (2,539 samples/s)
    SSD-ResNet34 700 + 1400 per sample         844.89 GFLOP
        844.89e9 / 395.6e12 s                =   2.136 ms per sample (468 samples/s)

The fixed part per batch is an assumption, not derived: 1 ms for launching
the batch's work (CUDA graphs), the host synchronizations of post-processing
and the copy of the detections back. ``--sim-batch-ms A B`` replaces any
profile with your own two numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

H100_SXM_FP16_TFLOPS = 989.0     # dense fp16 tensor-core peak
UTILIZATION = 0.40               # assumed share of that peak the model reaches
FIXED_MS = 1.0                   # assumed per-batch fixed time (launch, post-processing syncs, copy back)
GFLOP_PER_SAMPLE = {(300, 600): 155.82, (700, 1400): 844.89}   # counted by benchmarks/flops.py


@dataclass(frozen=True)
class DeviceTiming:
    """How long a simulated device holds a batch: ``fixed_ms + per_sample_ms * b`` milliseconds."""

    fixed_ms: float
    per_sample_ms: float
    source: str                              # the profile's name, or "--sim-batch-ms"
    sizes: tuple[int, int] | None = None     # the input sizes a profile was derived for

    def batch_s(self, batch: int) -> float:
        return (self.fixed_ms + self.per_sample_ms * batch) / 1e3

    def samples_per_s(self, batch: int) -> float:
        """One device's throughput at a fixed batch size."""
        return batch / self.batch_s(batch) if self.batch_s(batch) > 0 else float("inf")

    def describe(self) -> str:
        where = f" (profile {self.source})" if self.sizes else ""
        return f"{self.fixed_ms:g} + {self.per_sample_ms:.4g} x batch ms per batch{where}"


def _h100(sizes: tuple[int, int]) -> DeviceTiming:
    per_sample_ms = GFLOP_PER_SAMPLE[sizes] * 1e9 / (UTILIZATION * H100_SXM_FP16_TFLOPS * 1e12) * 1e3
    return DeviceTiming(FIXED_MS, per_sample_ms, f"h100-{sizes[0]}-{sizes[1]}", sizes)


PROFILES: dict[str, DeviceTiming] = {t.source: t for t in (_h100((300, 600)), _h100((700, 1400)))}
DEFAULT_PROFILE = "h100-300-600"


@dataclass(frozen=True)
class SimSettings:
    """What ``--backend simulated`` builds: ``devices`` devices of this timing."""

    timing: DeviceTiming
    devices: int = 1
