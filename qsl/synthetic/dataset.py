"""A synthetic data set in the exact COCO layout, for tests, demos and training.

``make_synthetic_coco(out_dir, num_images)`` writes
``<out_dir>/annotations/instances_<split>.json`` and ``<out_dir>/<split>/*.jpg``
with six real COCO categories (ids 1 person, 3 car, 13 stop sign,
37 sports ball, 44 bottle, 74 clock), each drawn as a distinct textured shape
(see :mod:`qsl.synthetic.silhouettes`) on a noisy, cluttered background.

Assumptions and guarantees:

- Deterministic: image ``i`` depends only on ``(seed, i)``, so the first N
  images are the same whatever ``num_images`` is, and the same seed gives the
  same files byte for byte (for a given Pillow build).
- Image ids are sparse and differ from the position in the ``images`` list
  (``id = 100000 + 7 * i``, ``file_name = f"{id:012d}.jpg"``), as in COCO, so
  code that confuses the two fails its tests.
- Boxes are the exact pixel extent of the drawn silhouette (COCO ``bbox`` is
  ``[x, y, width, height]`` in pixels, top-left corner); ``area`` is the
  silhouette's pixel count; ``segmentation`` is its polygons. ``iscrowd`` is 0.
  Objects lie fully inside the image and may overlap each other by up to 30%
  of either one's box; a later object is drawn over an earlier one.
- Objects come in COCO's three size ranges by area: small (< 32^2), medium and
  large (> 96^2); small ones are still at least 12 px on their short side.
- Image sides are uniform in [min_size, max_size]. About 10% of the images
  are grayscale (mode L JPEGs; image 2 always is), about 3% have no objects
  (image 1 always has none).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ground.files import replace_atomically

from qsl.synthetic.silhouettes import ASPECT, CATEGORIES, FILL, draw_shape

CATEGORY_IDS = tuple(c[0] for c in CATEGORIES)
SIZE_CLASSES = (("small", 0.25, 18.0, 30.0), ("medium", 0.45, 36.0, 90.0), ("large", 0.30, 105.0, 260.0))
MAX_OBJECTS = 7
MAX_OVERLAP = 0.3  # largest fraction of either box another box may cover
MIN_SIDE = 12


class SyntheticError(ValueError):
    """A bad argument to the generator; the message names it."""


def _box_overlaps(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]]) -> bool:
    """True if ``box`` (xyxy pixels) covers more than MAX_OVERLAP of any other box or vice versa."""
    x0, y0, x1, y1 = box
    area = (x1 - x0) * (y1 - y0)
    for a0, b0, a1, b1 in others:
        iw, ih = min(x1, a1) - max(x0, a0), min(y1, b1) - max(y0, b0)
        if iw > 0 and ih > 0:
            inter = iw * ih
            if inter > MAX_OVERLAP * area or inter > MAX_OVERLAP * (a1 - a0) * (b1 - b0):
                return True
    return False


def _background(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Smooth random colour field plus clutter lines and blocks."""
    gh, gw = (int(v) for v in rng.integers(2, 9, size=2))
    low = rng.integers(0, 256, size=(gh, gw, 3), dtype=np.uint8)
    img = Image.fromarray(low, "RGB").resize((width, height), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 9))):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        x0, x1 = sorted(int(v) for v in rng.integers(0, width, size=2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, height, size=2))
        if rng.random() < 0.6:
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 5)))
        else:
            draw.rectangle([x0, y0, x0 + (x1 - x0) // 3, y0 + (y1 - y0) // 3], fill=colour)
    return img


def _object_size(category_id: int, width: int, height: int, rng: np.random.Generator) -> tuple[int, int]:
    """Canvas (w, h) for one object, from a size class, the class aspect and its fill factor."""
    probs = [p for _, p, _, _ in SIZE_CLASSES]
    _, _, lo, hi = SIZE_CLASSES[int(rng.choice(len(SIZE_CLASSES), p=probs))]
    side = rng.uniform(lo, hi)  # square root of the target silhouette area
    aspect = rng.uniform(*ASPECT[category_id])
    w = side * math.sqrt(aspect / FILL[category_id])
    h = side / math.sqrt(aspect * FILL[category_id])
    shrink = min(1.0, 0.9 * width / w, 0.9 * height / h)
    w, h = w * shrink, h * shrink
    grow = max(1.0, MIN_SIDE / min(w, h))
    return max(int(round(w * grow)), MIN_SIDE), max(int(round(h * grow)), MIN_SIDE)


def _make_image(index: int, seed: int, min_size: int, max_size: int, image_id: int
                ) -> tuple[Image.Image, list[dict], int]:
    """Draw image ``index``; return it, its annotations (without ``id``) and its JPEG quality."""
    rng = np.random.default_rng([seed, index])
    width, height = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    img = _background(width, height, rng)
    empty = index == 1 or rng.random() < 0.03
    n_objects = 0 if empty else int(rng.integers(1, MAX_OBJECTS + 1))
    boxes: list[tuple[int, int, int, int]] = []
    anns: list[dict] = []
    for _ in range(n_objects):
        cat = int(rng.choice(CATEGORY_IDS))
        w, h = _object_size(cat, width, height, rng)
        shape = draw_shape(cat, w, h, rng)
        lx0, ly0, lx1, ly1 = shape.mask.getbbox()
        for _try in range(30):
            if boxes and rng.random() < 0.3:  # aim at an existing object's corner to create overlap
                bx0, by0, bx1, by1 = boxes[int(rng.integers(len(boxes)))]
                ox = int(rng.choice([bx0 - w + w // 4, bx1 - w // 4]))
                oy = int(rng.choice([by0 - h + h // 4, by1 - h // 4]))
            else:
                ox, oy = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            ox, oy = min(max(ox, 0), width - w), min(max(oy, 0), height - h)
            box = (ox + lx0, oy + ly0, ox + lx1, oy + ly1)
            if not _box_overlaps(box, boxes):
                break
        else:
            continue  # no room left for this object
        img.paste(shape.texture, (ox, oy), shape.mask)
        boxes.append(box)
        area = int(np.count_nonzero(np.asarray(shape.mask)))
        seg = [[round(v, 2) for x, y in poly for v in (x + ox, y + oy)] for poly in shape.polygons]
        anns.append({"image_id": image_id, "category_id": cat,
                     "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                     "area": area, "iscrowd": 0, "segmentation": seg})
    noise = int(rng.integers(3, 16))
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-noise, noise + 1, size=(height, width, 1), dtype=np.int16)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    if index == 2 or rng.random() < 0.1:
        img = img.convert("L")
    return img, anns, int(rng.integers(80, 96))


def synthetic_description(seed: int) -> str:
    """The ``info.description`` of a generated set: how a generated annotation file is recognized."""
    return f"Synthetic COCO-layout shapes, seed {seed}"


def make_synthetic_coco(out_dir: str | Path, num_images: int, seed: int = 0, split: str = "val2017",
                        min_size: int = 320, max_size: int = 640) -> Path:
    """Write a synthetic COCO-layout data set and return the annotation file's path.

    Layout: ``<out_dir>/annotations/instances_<split>.json`` and
    ``<out_dir>/<split>/<id:012d>.jpg``. See the module docstring for what the
    images contain. Writing over an existing set with the same arguments
    reproduces it.
    """
    if num_images < 1:
        raise SyntheticError(f"num_images must be at least 1, got {num_images}")
    if not 64 <= min_size <= max_size:
        raise SyntheticError(f"need 64 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
    out = Path(out_dir)
    img_dir, ann_dir = out / split, out / "annotations"
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        image_id = 100000 + 7 * i
        file_name = f"{image_id:012d}.jpg"
        img, anns, quality = _make_image(i, seed, min_size, max_size, image_id)
        img.save(img_dir / file_name, "JPEG", quality=quality)
        images.append({"id": image_id, "file_name": file_name, "width": img.width, "height": img.height,
                       "license": 1, "coco_url": "", "flickr_url": "", "date_captured": "2017-01-01 00:00:00"})
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, **ann})
    doc = {
        "info": {"description": synthetic_description(seed), "version": "1.0", "year": 2017,
                 "contributor": "qsl.synthetic", "url": "", "date_created": "2017-01-01"},
        "licenses": [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": sup} for cid, name, sup in CATEGORIES],
    }
    ann_file = ann_dir / f"instances_{split}.json"
    replace_atomically(ann_file, json.dumps(doc))
    return ann_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a synthetic COCO-layout detection data set.")
    parser.add_argument("--out", required=True, help="output folder (annotations/ and <split>/ go inside)")
    parser.add_argument("--num-images", type=int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--split", default="val2017", help="split name, e.g. train2017 or val2017")
    parser.add_argument("--min-size", type=int, default=320, help="smallest image side in pixels")
    parser.add_argument("--max-size", type=int, default=640, help="largest image side in pixels")
    args = parser.parse_args(argv)
    try:
        path = make_synthetic_coco(args.out, args.num_images, args.seed, args.split, args.min_size, args.max_size)
    except (SyntheticError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.num_images} images and {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
