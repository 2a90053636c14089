"""Drawing of the synthetic data set's six object classes.

Each class is a distinct silhouette with its own texture, so a small detector
trained from scratch can tell them apart:

====  ============  =========================================================
id    name          look
====  ============  =========================================================
1     person        round head, trapezoid torso, arms, two legs (tall)
3     car           wide body, cabin with windows, two dark wheels (wide)
13    stop sign     red octagon, white border and a white bar of "letters"
37    sports ball   saturated disc with stripes and a highlight
44    bottle        tall narrow body, shoulders, neck and cap, label band
74    clock         light disc with a dark rim, 12 ticks and two hands
====  ============  =========================================================

Assumptions: a shape is drawn in a local canvas of ``w x h`` pixels. Its
silhouette is a list of polygons (circles are 32-gons); the same polygons
fill the paste mask and become the COCO segmentation, so mask, segmentation
and box agree exactly. Decorations are drawn only on the texture, so they
never change the silhouette.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

Polygon = list[tuple[float, float]]  # (x, y) vertices in local pixel coordinates

CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (1, "person", "person"),
    (3, "car", "vehicle"),
    (13, "stop sign", "outdoor"),
    (37, "sports ball", "sports"),
    (44, "bottle", "kitchen"),
    (74, "clock", "indoor"),
)

# Per class: range of width/height aspect, and the fraction of the box the silhouette fills.
ASPECT = {1: (0.38, 0.5), 3: (1.8, 2.4), 13: (1.0, 1.0), 37: (1.0, 1.0), 44: (0.3, 0.42), 74: (1.0, 1.0)}
FILL = {1: 0.55, 3: 0.75, 13: 0.83, 37: 0.785, 44: 0.7, 74: 0.785}


@dataclass
class DrawnShape:
    """A drawn object: texture and mask of the same size, and its silhouette polygons."""

    texture: Image.Image   # RGB, w x h
    mask: Image.Image      # L, 255 inside the silhouette
    polygons: list[Polygon]


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 32) -> Polygon:
    return [(cx + rx * math.cos(2 * math.pi * k / n), cy + ry * math.sin(2 * math.pi * k / n)) for k in range(n)]


def _rect(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, size=3))


def _jitter(base: tuple[int, int, int], rng: np.random.Generator, amount: int = 30) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in base)


def _person(d: ImageDraw.ImageDraw, w: int, h: int, rng: np.random.Generator) -> list[Polygon]:
    skin = _jitter((rng.integers(120, 235), 150, 110), rng, 35)
    shirt, pants = _colour(rng), _colour(rng, 0, 160)
    head_r = min(0.09 * h, 0.24 * w)
    cx = w / 2
    head = _ellipse(cx, head_r, head_r * 0.95, head_r)
    top = 2 * head_r
    hip = 0.58 * h
    torso = [(cx - 0.22 * w, top), (cx + 0.22 * w, top), (cx + 0.18 * w, hip), (cx - 0.18 * w, hip)]
    arm_w = max(0.13 * w, 1.0)
    arms = [_rect(0, top + 0.02 * h, arm_w, 0.52 * h), _rect(w - arm_w, top + 0.02 * h, w, 0.52 * h)]
    shoulders = _rect(arm_w * 0.5, top, w - arm_w * 0.5, top + 0.06 * h)
    legs = [_rect(cx - 0.18 * w, hip, cx - 0.02 * w, h), _rect(cx + 0.02 * w, hip, cx + 0.18 * w, h)]
    for poly in (torso, shoulders, *arms):
        d.polygon(poly, fill=shirt)
    for poly in legs:
        d.polygon(poly, fill=pants)
    d.polygon(head, fill=skin)
    return [head, torso, shoulders, *arms, *legs]


def _car(d: ImageDraw.ImageDraw, w: int, h: int, rng: np.random.Generator) -> list[Polygon]:
    body_c = _colour(rng)
    glass = _jitter((150, 190, 215), rng, 25)
    wheel_r = 0.2 * h
    body = _rect(0, 0.38 * h, w, h - wheel_r)
    cabin = [(0.28 * w, 0), (0.7 * w, 0), (0.8 * w, 0.4 * h), (0.17 * w, 0.4 * h)]
    wheels = [_ellipse(x * w, h - wheel_r, wheel_r, wheel_r) for x in (0.22, 0.78)]
    d.polygon(body, fill=body_c)
    d.polygon(cabin, fill=body_c)
    d.polygon([(0.31 * w, 0.07 * h), (0.47 * w, 0.07 * h), (0.47 * w, 0.36 * h), (0.23 * w, 0.36 * h)], fill=glass)
    d.polygon([(0.51 * w, 0.07 * h), (0.67 * w, 0.07 * h), (0.74 * w, 0.36 * h), (0.51 * w, 0.36 * h)], fill=glass)
    d.rectangle([0.9 * w, 0.45 * h, w, 0.55 * h], fill=(250, 230, 120))  # head light
    for x, poly in zip((0.22, 0.78), wheels):
        d.polygon(poly, fill=(20, 20, 20))
        d.polygon(_ellipse(x * w, h - wheel_r, wheel_r * 0.45, wheel_r * 0.45), fill=(170, 170, 170))
    return [body, cabin, *wheels]


def _stop_sign(d: ImageDraw.ImageDraw, w: int, h: int, rng: np.random.Generator) -> list[Polygon]:
    red = (int(rng.integers(170, 240)), int(rng.integers(0, 50)), int(rng.integers(0, 50)))
    r = w / 2
    octagon = [(r + r * math.cos(math.pi / 8 + k * math.pi / 4), r + r * math.sin(math.pi / 8 + k * math.pi / 4))
               for k in range(8)]
    d.polygon(octagon, fill=(235, 235, 235))
    inner = 0.86 * r
    d.polygon([(r + inner * math.cos(math.pi / 8 + k * math.pi / 4), r + inner * math.sin(math.pi / 8 + k * math.pi / 4))
               for k in range(8)], fill=red)
    letter_w = 0.16 * w
    for k in range(4):  # four blocky white letters
        x0 = 0.16 * w + k * 0.18 * w
        d.rectangle([x0, 0.4 * h, x0 + letter_w * 0.8, 0.6 * h], fill=(240, 240, 240))
    return [octagon]


def _sports_ball(d: ImageDraw.ImageDraw, w: int, h: int, rng: np.random.Generator) -> list[Polygon]:
    base, stripe = _colour(rng, 60), _colour(rng)
    r = w / 2
    disc = _ellipse(r, r, r, r)
    d.rectangle([0, 0, w, h], fill=base)
    angle = rng.uniform(0, math.pi)
    dx, dy = math.cos(angle), math.sin(angle)
    width = max(int(0.14 * w), 1)
    for off in (-0.45, 0.0, 0.45):  # three parallel stripes across the ball
        ox, oy = r - dy * off * w, r + dx * off * w
        d.line([(ox - dx * w, oy - dy * w), (ox + dx * w, oy + dy * w)], fill=stripe, width=width)
    d.ellipse([0.22 * w, 0.18 * h, 0.4 * w, 0.34 * h], fill=(255, 255, 255))  # highlight
    return [disc]


def _bottle(d: ImageDraw.ImageDraw, w: int, h: int, rng: np.random.Generator) -> list[Polygon]:
    glass = [(40, 120, 50), (110, 60, 20), (90, 150, 200), (200, 200, 190)][int(rng.integers(0, 4))]
    glass = _jitter(glass, rng, 25)
    body = _rect(0, 0.42 * h, w, h)
    shoulder = [(0, 0.42 * h), (w, 0.42 * h), (0.68 * w, 0.24 * h), (0.32 * w, 0.24 * h)]
    neck = _rect(0.32 * w, 0.07 * h, 0.68 * w, 0.24 * h)
    cap = _rect(0.28 * w, 0, 0.72 * w, 0.07 * h)
    for poly in (body, shoulder, neck):
        d.polygon(poly, fill=glass)
    d.polygon(cap, fill=_colour(rng))
    d.rectangle([0, 0.55 * h, w, 0.8 * h], fill=_colour(rng, 120))  # label band
    d.rectangle([0.15 * w, 0.44 * h, 0.28 * w, 0.95 * h], fill=_jitter((235, 235, 235), rng, 15))  # highlight
    return [body, shoulder, neck, cap]


def _clock(d: ImageDraw.ImageDraw, w: int, h: int, rng: np.random.Generator) -> list[Polygon]:
    face = _jitter((235, 232, 220), rng, 20)
    rim = [(20, 20, 20), (90, 60, 30), (30, 40, 120), (180, 150, 40)][int(rng.integers(0, 4))]
    r = w / 2
    disc = _ellipse(r, r, r, r)
    d.polygon(disc, fill=rim)
    d.polygon(_ellipse(r, r, 0.84 * r, 0.84 * r), fill=face)
    tick_w = max(int(0.05 * w), 1)
    for k in range(12):
        a = k * math.pi / 6
        d.line([(r + 0.62 * r * math.cos(a), r + 0.62 * r * math.sin(a)),
                (r + 0.78 * r * math.cos(a), r + 0.78 * r * math.sin(a))], fill=(30, 30, 30), width=tick_w)
    for length, a in ((0.45, rng.uniform(0, 2 * math.pi)), (0.7, rng.uniform(0, 2 * math.pi))):
        d.line([(r, r), (r + length * r * math.cos(a), r + length * r * math.sin(a))],
               fill=(10, 10, 10), width=max(int(0.06 * w), 1))
    return [disc]


_DRAW = {1: _person, 3: _car, 13: _stop_sign, 37: _sports_ball, 44: _bottle, 74: _clock}


def draw_shape(category_id: int, w: int, h: int, rng: np.random.Generator) -> DrawnShape:
    """Draw one object of ``category_id`` filling a ``w x h`` canvas.

    Returns its texture (RGB), its mask (L, 255 inside) and the silhouette
    polygons in local pixel coordinates. Fine texture noise is added to the
    texture so objects are not flat colour.
    """
    texture = Image.new("RGB", (w, h))
    polygons = _DRAW[category_id](ImageDraw.Draw(texture), w, h, rng)
    mask = Image.new("L", (w, h), 0)
    mdraw = ImageDraw.Draw(mask)
    for poly in polygons:
        mdraw.polygon(poly, fill=255)
    arr = np.asarray(texture, dtype=np.int16) + rng.integers(-12, 13, size=(h, w, 1), dtype=np.int16)
    texture = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return DrawnShape(texture, mask, polygons)
