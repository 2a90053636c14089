"""The model's configuration: what network runs and how its output becomes detections.

One frozen dataclass, read by every backend; the harness builds it from a
config file's ``[model]`` table and the flags (harness/settings/config.py),
which is where its keys are documented for users. A bad value is a
:class:`~ground.errors.ConfigError` naming the key.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ground.errors import ConfigError

NUM_FEATURE_MAPS = 6
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKBONES = ("resnet34", "resnet18")
# "training": the MLPerf training SSD (v0.5/v0.6), heads stride 1.
# "ssd1200": the MLPerf inference SSD-ResNet34 1200x1200, heads stride 3.
VARIANTS = ("training", "ssd1200")


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """What network runs and how its output becomes detections."""

    checkpoint: str | None = None          # path to an MLPerf training checkpoint (None needs random_weights)
    # Run without a checkpoint, on seeded random weights: for speed measurements only (the detections mean
    # nothing). Must be asked for, so a forgotten --model is an error rather than a meaningless mAP.
    random_weights: bool = False
    # Allow a checkpoint that is a whole pickled nn.Module (the zenodo resnet34-ssd1200.pytorch): reading
    # it runs code from the file, so turn this on only for files from a source you trust. Set by the
    # --trust-pickle flag only: a config file that sets it true is refused (harness/settings/config.py).
    trust_pickle: bool = False
    backbone: str = "resnet34"             # "resnet34" (MLPerf) or "resnet18" (same layer names, smaller)
    variant: str = "training"              # head/extra-layer strides, see VARIANTS
    num_classes: int = 81                  # including background (label 0)
    image_size: tuple[int, int] = (300, 300)   # square input sizes S0, S1 in pixels; equal = single scale
    dboxes_scale: float = 1.0              # multiplies the default-box scales [21, 45, ..., 315] (pixels)
    dboxes_steps: tuple[int, ...] | None = None  # per-map steps in pixels; None = use feature sizes
    small_mask: tuple[int, ...] = (1,) * NUM_FEATURE_MAPS  # maps used in the S0 pass
    large_mask: tuple[int, ...] = (1,) * NUM_FEATURE_MAPS  # maps used in the S1 pass
    use_filter: bool = False               # S0 keeps area > 96^2, S1 keeps area < 96^2 (original pixels)
    # Network precision: fp32, bf16 (CPU/CUDA), fp16 (CUDA), or "auto": fp16 on CUDA, bf16 on a CPU that
    # computes it natively (AVX512-BF16, AMX), fp32 on other CPUs (backends/pytorch/precision.py).
    precision: str = "auto"
    channels_last: bool = True             # NHWC memory layout for the convolutions
    compile: bool = False                  # torch.compile the network (inductor); its compile time is logged
    cuda_graphs: bool = True               # CUDA only: replay the network as a CUDA graph per (batch, input size)
    score_threshold: float = 0.05          # per-class score a box must exceed
    nms_iou: float = 0.5                   # IoU above which NMS suppresses a box of the same class
    max_per_class: int = 200               # best boxes per class kept before NMS
    max_detections: int = 200              # best detections kept per image after NMS

    def __post_init__(self) -> None:
        if self.checkpoint and self.random_weights:
            raise ConfigError(f"model.checkpoint ({self.checkpoint}) and model.random_weights contradict each "
                              "other: give one of them")
        check_choice("model.backbone", self.backbone, BACKBONES)
        check_choice("model.variant", self.variant, VARIANTS)
        check_choice("model.precision", self.precision, PRECISIONS)
        if len(self.image_size) != 2 or any(int(s) != s or s <= 0 for s in self.image_size):
            raise ConfigError(f"model.image_size must be two positive integers, got {list(self.image_size)}")
        for name in ("small_mask", "large_mask"):
            mask = getattr(self, name)
            if len(mask) != NUM_FEATURE_MAPS or any(m not in (0, 1) for m in mask):
                raise ConfigError(
                    f"model.{name} must be {NUM_FEATURE_MAPS} values of 0 or 1 (one per feature map), "
                    f"got {list(mask)}")
            if not any(mask):
                raise ConfigError(f"model.{name} masks out every feature map: keep at least one 1")
        if self.dboxes_steps is not None and (
                len(self.dboxes_steps) != NUM_FEATURE_MAPS or any(s <= 0 for s in self.dboxes_steps)):
            raise ConfigError(
                f"model.dboxes_steps must be {NUM_FEATURE_MAPS} positive numbers, got {list(self.dboxes_steps)}")
        if self.dboxes_scale <= 0:
            raise ConfigError(f"model.dboxes_scale must be positive, got {self.dboxes_scale}")
        if self.num_classes < 2:
            raise ConfigError(f"model.num_classes must be at least 2 (background + 1), got {self.num_classes}")

    @property
    def sizes(self) -> tuple[int, ...]:
        """Distinct input sizes, in pass order (one when the two are equal)."""
        s0, s1 = self.image_size
        return (s0,) if s0 == s1 else (s0, s1)
