"""What can be checked about the model before anything is built: settings that cannot all be honoured.

Everything here is arithmetic on :class:`~backends.config.ModelConfig` (no torch,
no files), so ``run.py`` says it before the slow part starts.

- One input size (``image_size = [S, S]``) is one pass. The seed's two passes
  would then be identical, so ``small_mask`` and ``large_mask`` are merged (a
  feature map runs when either mask has it) and ``use_filter`` keeps a box
  when either pass would: with the same maps in both masks it removes nothing.
  Both are legal but rarely what was meant, so they are warned about, naming
  the flags (or the config file's keys) that asked for them.
"""
from __future__ import annotations

from typing import Callable

from backends.config import ModelConfig


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
