"""Decode an image file to RGB and resize it to the network's square inputs.

The reference pre-processing (MLPerf SSD) is PIL: ``Image.open``,
``convert("RGB")`` (COCO holds grayscale and CMYK JPEGs), ``resize((S, S),
BILINEAR)``, aspect ratio not kept. Two decoders implement it:

- ``"pil"``: exactly that, the reference itself.
- ``"torchvision"`` (default, about 3x faster measured on this project's
  2-core machine, see ``benchmarks/results/prepare.md``): libjpeg-turbo via
  ``torchvision.io.decode_jpeg(mode=RGB)`` (identical RGB pixels to PIL for
  baseline, progressive, grayscale and CMYK JPEGs), then
  ``torch.nn.functional.interpolate(bilinear, align_corners=False,
  antialias=True)`` on uint8. With ``antialias=True`` downscaling averages
  over the source footprint as PIL does, so results differ from PIL by at
  most 1 grey level (rounding). Files that are not JPEGs fall back to PIL
  decoding, then the same resize.

Either way every size is resized from the full-resolution decode (never from
another size), and the choice is recorded in the cache metadata.
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

DECODERS = ("torchvision", "pil")
RESIZE_METHOD = {
    "torchvision": "torchvision.io.decode_jpeg RGB + torch bilinear antialias=True uint8, aspect not kept",
    "pil": "PIL convert('RGB') + PIL resize BILINEAR, aspect not kept",
}


class BadImageError(ValueError):
    """An image file cannot be used; the message says why (empty, undecodable, ...)."""


def _pil_rgb(data: bytes) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert("RGB")
    except Image.DecompressionBombError as e:   # PIL refuses images over 2 x MAX_IMAGE_PIXELS outright
        size = re.search(r"\((\d+) pixels\)", str(e))
        raise BadImageError(f"is too large to decode: {size.group(1) if size else 'its'} pixels are over PIL's pixel "
                            f"limit of {2 * Image.MAX_IMAGE_PIXELS} (its guard against decompression bombs)") from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL reports corrupt files with these
        why = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(e))  # the in-memory file's repr
        raise BadImageError(f"cannot be decoded ({why})") from None


def decode_rgb(path: str | Path, decoder: str = "torchvision") -> torch.Tensor:
    """Read ``path`` and decode it to an RGB uint8 Tensor[3, H, W].

    Raises:
        BadImageError: the file is empty or not a decodable image.
        FileNotFoundError: the file does not exist.
    """
    data = Path(path).read_bytes()
    if not data:
        raise BadImageError("is empty (0 bytes)")
    if decoder == "torchvision":
        try:
            buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            return decode_jpeg(buf, mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # not a JPEG libjpeg-turbo accepts: let PIL decode it or say why it cannot
    elif decoder != "pil":
        raise ValueError(f"unknown decoder {decoder!r}; use one of {', '.join(DECODERS)}")
    rgb = np.asarray(_pil_rgb(data))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


def resize_square(image: torch.Tensor, size: int, decoder: str = "torchvision") -> torch.Tensor:
    """Resize an RGB uint8 Tensor[3, H, W] to uint8 Tensor[3, size, size], bilinear, aspect not kept."""
    if decoder == "pil":
        pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy(), "RGB")
        out = np.asarray(pil.resize((size, size), Image.BILINEAR))
        return torch.from_numpy(out.copy()).permute(2, 0, 1)
    x = image.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def load_resized(path: str | Path, sizes: Sequence[int], decoder: str = "torchvision"
                 ) -> tuple[dict[int, torch.Tensor], tuple[int, int]]:
    """Decode ``path`` once and resize it to every size.

    Returns ({S: uint8 Tensor[3, S, S]}, (height, width) of the decoded image).
    """
    image = decode_rgb(path, decoder)
    return {s: resize_square(image, s, decoder) for s in sizes}, (int(image.shape[1]), int(image.shape[2]))
