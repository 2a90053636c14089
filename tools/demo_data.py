"""COCO-format detection data held in RAM for demo training and evaluation.

Assumptions:
- Layout ``<root>/annotations/instances_<split>.json`` with images in ``<root>/<split>/``.
- Labels: label i (1..K) is the i-th category id of ``sorted(category ids)``; 0 is background.
  This is the accuracy script's mapping ``[0] + sorted(getCatIds())``.
- Pre-processing is the product's own (qsl/cache/jpeg.py, its default decoder: the pixels the
  benchmark's cache holds). Images are stored resized as uint8 ``[N, 3, S, S]``; normalization
  (backends/ssd/normalize.py) happens per batch.
- Boxes are ``xyxy`` fp32 normalized to [0, 1] of the image; crowd boxes and boxes under one
  pixel wide or high are dropped.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.demo.command import DemoDataError
from qsl.coco_layout import default_annotation_file
from qsl.cache.jpeg import BadImageError, load_resized


@dataclass
class DetectionSet:
    """Images resized to ``image_size`` plus their ground truth."""

    images: torch.Tensor            # uint8 [N, 3, S, S], RGB
    boxes: list[torch.Tensor]       # N tensors [G_i, 4] (x1, y1, x2, y2) normalized, fp32
    labels: list[torch.Tensor]      # N int64 tensors [G_i] in 1..K
    image_ids: list[int]            # COCO image ids, in annotation-file order
    image_hw: torch.Tensor          # int64 [N, 2] original (height, width) in pixels
    categories: list[dict]          # COCO categories {"id", "name"}, sorted by id
    image_size: int

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def label_map(self) -> dict[int, int]:
        """{label: COCO category id}, labels 1..K."""
        return {i + 1: int(c["id"]) for i, c in enumerate(self.categories)}


def load_image(path: Path, image_size: int) -> torch.Tensor:
    """One image as uint8 Tensor[3, S, S], decoded and resized as the benchmark's cache does."""
    try:
        return load_resized(path, [image_size])[0][image_size]
    except (OSError, BadImageError) as exc:
        raise DemoDataError(f"cannot read image {path}: {exc}; regenerate or remove the data folder") from exc


def load_coco_set(root: Path, split: str, image_size: int = 300, limit: int | None = None,
                  progress: bool = False) -> DetectionSet:
    """Read a COCO-format split into RAM.

    Args:
        root: folder holding ``annotations/`` and ``<split>/``.
        split: e.g. ``"train2017"``.
        image_size: side S of the stored square images.
        limit: keep only the first ``limit`` images of the annotation file.
    """
    ann_path = default_annotation_file(root, split)
    if not ann_path.is_file():
        raise DemoDataError(f"annotation file {ann_path} not found: expected COCO layout "
                            f"<root>/annotations/instances_{split}.json")
    try:
        coco = json.loads(ann_path.read_text())
        categories = sorted(({"id": int(c["id"]), "name": c["name"]} for c in coco["categories"]),
                            key=lambda c: c["id"])
        images = coco["images"][:limit] if limit else coco["images"]
        label_of = {c["id"]: i + 1 for i, c in enumerate(categories)}
        per_image: dict[int, list[dict]] = {int(im["id"]): [] for im in images}
        for ann in coco["annotations"]:
            if int(ann["image_id"]) in per_image and not ann.get("iscrowd", 0):
                per_image[int(ann["image_id"])].append(ann)
    except (KeyError, TypeError, ValueError) as exc:
        raise DemoDataError(f"{ann_path} is not a COCO instances file ({exc!r})") from exc
    if not images:
        raise DemoDataError(f"{ann_path} lists no images")
    stored = torch.empty(len(images), 3, image_size, image_size, dtype=torch.uint8)  # filled in place: no copy
    boxes, labels, hw = [], [], []
    iterator = images
    if progress and sys.stderr.isatty():   # a bar's carriage returns do not belong in a redirected log
        from tqdm import tqdm
        iterator = tqdm(images, desc=f"decode {split}", unit="img")
    for i, im in enumerate(iterator):
        w, h = float(im["width"]), float(im["height"])
        stored[i] = load_image(Path(root) / split / im["file_name"], image_size)
        b, lab = [], []
        for ann in per_image[int(im["id"])]:
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            if bw >= 1 and bh >= 1:
                b.append([x / w, y / h, (x + bw) / w, (y + bh) / h])
                lab.append(label_of[int(ann["category_id"])])
        boxes.append(torch.tensor(b, dtype=torch.float32).reshape(-1, 4).clamp(0, 1))
        labels.append(torch.tensor(lab, dtype=torch.int64))
        hw.append([int(im["height"]), int(im["width"])])
    return DetectionSet(stored, boxes, labels, [int(im["id"]) for im in images],
                        torch.tensor(hw, dtype=torch.int64), categories, image_size)


def augment(images: torch.Tensor, boxes: list[torch.Tensor], gen: torch.Generator,
            flip_p: float = 0.5, jitter: float = 0.2, gray_p: float = 0.1,
            ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Random horizontal flip, brightness/contrast/saturation jitter and grayscale, per image.

    Args:
        images: uint8 Tensor[N, 3, S, S].
        boxes: N tensors [G_i, 4] in (x1, y1, x2, y2) format, normalized.
        gen: the random source (seeded per step, so runs are reproducible and resumable).

    Returns:
        fp32 Tensor[N, 3, S, S] in [0, 255] and the (possibly flipped) boxes.
    """
    n = images.shape[0]
    x = images.float()
    flip = torch.rand(n, generator=gen) < flip_p
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    out_boxes = [torch.stack([1 - b[:, 2], b[:, 1], 1 - b[:, 0], b[:, 3]], 1) if f else b
                 for b, f in zip(boxes, flip.tolist())]
    factors = 1 + jitter * (2 * torch.rand(3, n, 1, 1, 1, generator=gen) - 1)
    gray_w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    x = x * factors[0]                                                   # brightness
    x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) * factors[1] + x.mean(dim=(1, 2, 3), keepdim=True)
    gray = (x * gray_w).sum(1, keepdim=True)
    x = (x - gray) * factors[2] + gray                                   # saturation
    to_gray = torch.rand(n, generator=gen) < gray_p
    x = torch.where(to_gray.view(n, 1, 1, 1), gray.expand_as(x), x)
    return x.clamp(0, 255), out_boxes
