"""What can be checked about the model before anything is built: its geometry, and settings that cannot
all be honoured.

Everything here is arithmetic on :class:`~backends.model_config.ModelConfig` (no torch,
no files), so ``run.py`` says it before the slow part starts.

- Geometry (:func:`check_geometry`): every input size has a non-empty last
  feature map, steps fit both sizes, and no size exceeds the cache's limit
  (``qsl.cache.reader.MAX_IMAGE_SIZE``); the refusal says what such an input would
  cost in memory.
- One input size (``image_size = [S, S]``) is one pass. The seed's two passes
  would then be identical, so ``small_mask`` and ``large_mask`` are merged (a
  feature map runs when either mask has it) and ``use_filter`` keeps a box
  when either pass would: with the same maps in both masks it removes nothing.
  Both are legal but rarely what was meant, so they are warned about, naming
  the flags (or the config file's keys) that asked for them.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

from backends.model_config import ModelConfig
from backends.ssd.geometry import GeometryError, check_steps, map_sizes
from qsl.cache.reader import MAX_IMAGE_SIZE

STEM_CHANNELS = 64          # the backbone's first convolution: 64 channels at half the input size
_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "auto": 4}   # auto: fp32 on some CPUs


def size_setting(model: ModelConfig, given: Mapping[str, str]) -> str:
    """How messages name the input sizes: the flag or config key that set them, else their values."""
    return given.get("image_size", f"image size {' '.join(map(str, model.image_size))}")


def check_geometry(model: ModelConfig, where: str, network: bool = True) -> None:
    """Raise GeometryError unless every input size fits the cache and (``network``) the SSD.

    ``where`` names the setting in messages, e.g. "--image-size 300 5000". ``network`` False (a backend
    without the SSD, such as the null backend) checks the cache's limit only.
    """
    for size in dict.fromkeys(model.image_size):
        if size > MAX_IMAGE_SIZE:
            stem = STEM_CHANNELS * math.ceil(size / 2) ** 2 * _BYTES[model.precision]
            raise GeometryError(
                f"{where}: {size} is larger than {MAX_IMAGE_SIZE} pixels, the largest input this harness "
                f"prepares: one {size}x{size} image takes {3 * size * size / 1e6:.0f} MB in the cache, and the "
                f"network's first convolution alone writes {stem / 1e9:.1f} GB per image in {model.precision}")
        if not network:
            continue
        try:
            map_sizes(size, model.variant)
        except GeometryError as e:
            raise GeometryError(f"{where}: {e}") from None
    if network and model.dboxes_steps is not None:
        s0, s1 = model.image_size
        check_steps(s0, model.dboxes_steps, model.variant, other_size=s1)
        check_steps(s1, model.dboxes_steps, model.variant, other_size=s0)


def single_scale_warnings(model: ModelConfig, name: Callable[[tuple[str, ...]], str]) -> list[str]:
    """Warnings for two-scale settings a single-scale run cannot honour.

    ``name(keys)`` says where the keys were set, e.g. ``"--small-mask and --large-mask"``.
    """
    s0, s1 = model.image_size
    if s0 != s1:
        return []
    head = f"image size {s0} {s1} is one pass, so "
    tail = "; give two different sizes (--image-size S0 S1) for two-scale inference"
    out = []
    if model.small_mask != model.large_mask:
        out.append(head + f"{name(('small_mask', 'large_mask'))} are merged: a feature map runs when either mask "
                          f"has it ({list(model.small_mask)} | {list(model.large_mask)})" + tail)
    if model.use_filter and model.small_mask == model.large_mask:
        out.append(head + f"{name(('use_filter',))} removes nothing: it keeps a box when either of the two "
                          "identical passes would" + tail)
    return out
