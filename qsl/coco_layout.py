"""Where a COCO-layout data set keeps its annotations, its images and its cache.

``<data>/annotations/instances_val2017.json`` with images in ``<data>/val2017/``
or ``<data>/images/val2017/``, or any annotation file ``instances_<split>.json``
given by path (images then in ``<split>/`` beside or under ``images/`` of its
parent's parent, or of ``data_dir``). The cache defaults to ``<data>/ssd_cache``.
The position of an image in the annotation file's ``images`` list is its
``qsl_idx``, everywhere.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from qsl.cache.reader import PrepareError, check_max_images

DEFAULT_CACHE_NAME = "ssd_cache"


def default_annotation_file(data_dir: str | Path, split: str = "val2017") -> Path:
    """``<data_dir>/annotations/instances_<split>.json`` (val2017: the benchmark's)."""
    return Path(data_dir) / "annotations" / f"instances_{split}.json"


def find_annotation_file(data_dir: str | Path | None, annotation_file: str | Path | None = None) -> Path:
    """The annotation file of ``data_dir`` (or ``annotation_file``), or PrepareError saying what was expected."""
    if data_dir is None and annotation_file is None:
        raise PrepareError("give a data folder (--data) or an annotation file (--annotation-file)")
    ann = default_annotation_file(data_dir) if annotation_file is None else Path(annotation_file)
    if not ann.is_file():
        raise PrepareError(f"annotation file {ann} not found: expected COCO layout <data>/annotations/"
                           f"instances_val2017.json, or pass --annotation-file")
    return ann


def find_image_dir(data_dir: str | Path | None, ann: Path) -> Path:
    """The image folder of the annotation file ``ann``, or PrepareError listing what was tried.

    Only preparation reads images: a complete cache serves a run without them.
    """
    split = ann.stem[len("instances_"):] if ann.stem.startswith("instances_") else "val2017"
    roots = [Path(data_dir)] if data_dir is not None else []
    roots.append(ann.resolve().parent.parent)
    tried = [r / sub / split for r in roots for sub in ("", "images")]
    for folder in tried:
        if folder.is_dir():
            return folder
    raise PrepareError(f"image folder for {ann} not found; tried {', '.join(map(str, dict.fromkeys(tried)))}")


def find_inputs(data_dir: str | Path | None, annotation_file: str | Path | None = None) -> tuple[Path, Path]:
    """Locate (annotation file, image folder), or raise PrepareError listing what was tried."""
    ann = find_annotation_file(data_dir, annotation_file)
    return ann, find_image_dir(data_dir, ann)


def read_image_list(ann: Path, max_images: int | None = None) -> list[dict[str, Any]]:
    """The annotation file's ``images`` list (first ``max_images``), as [{qsl_idx, id, file_name, width, height}]."""
    try:
        doc = json.loads(ann.read_text())
    except (OSError, ValueError) as e:
        raise PrepareError(f"annotation file {ann} is not readable JSON ({e})") from None
    return image_list(doc, ann, max_images)


def image_list(doc: Any, ann: Path, max_images: int | None = None) -> list[dict[str, Any]]:
    """:func:`read_image_list` for the annotation file ``ann`` already parsed into ``doc``; the same checks."""
    try:
        out = [{"qsl_idx": i, "id": int(im["id"]), "file_name": str(im["file_name"]),
                "width": int(im["width"]), "height": int(im["height"])} for i, im in enumerate(doc["images"])]
    except ValueError as e:
        raise PrepareError(f"annotation file {ann} is not readable JSON ({e})") from None
    except (KeyError, TypeError) as e:
        raise PrepareError(f"annotation file {ann} is not COCO format: an image entry lacks {e} "
                           f"(need images[].id, file_name, width, height)") from None
    problem = repeated_ids(ann, out, "image id", "images")
    if problem:
        raise PrepareError(problem)
    return first_images(out, max_images, ann)


def first_images(images: list[dict[str, Any]], max_images: int | None, ann: Path) -> list[dict[str, Any]]:
    """The first ``max_images`` of ``ann``'s image list ``images`` (None = all); PrepareError for
    ``max_images`` below 1 or when none are left."""
    check_max_images(max_images)
    out = images if max_images is None else images[:max_images]
    if not out:
        raise PrepareError(f"annotation file {ann} lists no images")
    return out


def repeated_ids(path: str | Path, items: Sequence[Mapping[str, Any]], what: str, key: str) -> str | None:
    """None when every ``items[n]["id"]`` is unique, else a message naming the repeated ids and where.

    ``key`` names the list in the file (``images``, ``annotations``), ``what`` one entry ("image id").
    A repeated image would be scored twice and a repeated annotation id hides one object from COCO's
    index, so either changes the mAP without a word.
    """
    seen: dict[Any, list[int]] = {}
    for n, item in enumerate(items):
        seen.setdefault(item["id"], []).append(n)
    repeats = [(i, at) for i, at in seen.items() if len(at) > 1]
    if not repeats:
        return None
    shown = "; ".join(f"{what} {i} more than once ({' and '.join(f'{key}[{n}]' for n in at)})"
                      for i, at in repeats[:3])
    more = f"; and {len(repeats) - 3} more repeated ids" if len(repeats) > 3 else ""
    return (f"annotation file {path} lists {shown}{more}: each must appear once (a repeated entry changes "
            "which images and objects are scored); remove the duplicates")


def default_cache_dir(data_dir: str | Path | None, ann: Path) -> Path:
    root = Path(data_dir) if data_dir is not None else ann.resolve().parent.parent
    return root / DEFAULT_CACHE_NAME
