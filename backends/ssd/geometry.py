"""The SSD's geometry as arithmetic: feature-map sizes, the smallest input, where steps put the boxes.

Torch-free on purpose, so the flags can be checked before torch is imported
(``run.py`` answers a bad ``--image-size`` in a fraction of a second). The
layer strides are those of :mod:`backends.ssd.model`; the step rules are
explained in :mod:`backends.ssd.default_boxes`.
"""
from __future__ import annotations

from typing import Sequence

from ground.errors import InputError

# Per variant: (head stride, [(stride, padding) of each extra block's 3x3 conv]).
VARIANT_STRIDES = {
    "training": (1, [(2, 1), (2, 1), (2, 1), (1, 0), (1, 0)]),
    "ssd1200": (3, [(2, 1), (2, 1), (2, 1), (2, 0), (1, 0)]),
}


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def feature_sizes(image_size: int, variant: str = "training") -> list[int]:
    """Side length of each of the 6 feature maps the heads see, for a square input.

    Derived from the layer arithmetic: conv1 (7x7 s2 p3), maxpool (3x3 s2 p1),
    layer2 (3x3 s2 p1), then each extra block's 3x3 conv, then the head conv.
    At 300 (training) this gives 38, 19, 10, 5, 3, 1.
    """
    head_stride, extras = VARIANT_STRIDES[variant]
    f = _conv_out(image_size, 7, 2, 3)
    f = _conv_out(f, 3, 2, 1)
    f = _conv_out(f, 3, 2, 1)
    maps = [f]
    for stride, pad in extras:
        maps.append(_conv_out(maps[-1], 3, stride, pad))
    return [_conv_out(m, 3, head_stride, 1) for m in maps]


def min_image_size(variant: str = "training") -> int:
    """Smallest square input for which every feature map has at least one cell."""
    size = 1
    while min(feature_sizes(size, variant)) < 1:
        size += 1
    return size


# How each variant turns a step into cells per side (see backends/ssd/default_boxes.py).
CELLS_PER_SIDE = {"training": lambda size, step: size / step, "ssd1200": lambda size, step: size // step}


class GeometryError(InputError, ValueError):
    """The input size, steps or masks do not fit the network; the message says which."""


def map_sizes(image_size: int, variant: str = "training") -> list[int]:
    """Feature-map sizes, with a clear error when the input is too small for the network."""
    sizes = feature_sizes(image_size, variant)
    if min(sizes) < 1:
        raise GeometryError(
            f"image size {image_size} is too small for this SSD ({variant}): its last feature map would be "
            f"empty; use at least {min_image_size(variant)} pixels")
    return sizes


def fitting_steps(image_size: int, variant: str = "training") -> list[int]:
    """Whole-pixel steps that fit ``image_size`` (|S / step - f| < 1 on every map)."""
    return [max(1, round(image_size / f)) for f in map_sizes(image_size, variant)]


def check_steps(image_size: int, steps: Sequence[float], variant: str = "training",
                other_size: int | None = None) -> None:
    """Raise GeometryError unless ``steps`` fit ``image_size``; ``other_size``: the run's other input size."""
    cells = CELLS_PER_SIDE[variant]
    for k, (f, step) in enumerate(zip(map_sizes(image_size, variant), steps)):
        if abs(cells(image_size, step) - f) >= 1:
            if other_size is not None and other_size != image_size:
                advice = (f"steps are in pixels of one input size, so no list fits both {other_size} and "
                          f"{image_size}: drop --dboxes-steps (the default places boxes by feature-map size, "
                          "which fits every size)")
            else:
                advice = f"drop --dboxes-steps or give {' '.join(map(str, fitting_steps(image_size, variant)))}"
            raise GeometryError(f"dboxes_steps {list(steps)} do not fit image size {image_size}: map {k} has "
                                f"{f}x{f} cells but {image_size}/{step} gives {cells(image_size, step):.2f}; {advice}")
