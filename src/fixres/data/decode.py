"""Reading one image file into an RGB PIL image, whatever its format and pixel mode.

JPEG, PNG, WebP (and what else Pillow reads) in any mode -- grayscale, palette,
RGBA, CMYK, 16-bit -- come out as 8-bit RGB with the EXIF orientation applied.
Reading only the header (:func:`read_header`) gives the displayed size without
decoding, which is what scanning and ``fixres analyze`` need. :func:`decode_reduced`
lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8 of its size (the fast pipeline's draft
decoding); :func:`load_rgb` is the same decoder at full size.
"""
from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import BinaryIO, NamedTuple

from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

# Pillow warns above 89.5 MPixel and raises above twice that. We refuse anything above the
# warning threshold: a 9,000 x 10,000 photo is already far beyond what classification needs,
# and a file that claims more is more likely a decompression bomb than a picture.
MAX_IMAGE_PIXELS = 89_478_485

# Orientations 5-8 transpose the image: the displayed width is the stored height.
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


class ImageHeader(NamedTuple):
    width: int   # as displayed, after EXIF orientation
    height: int
    format: str


class UnreadableImage(Exception):
    """The file is not an image Pillow can decode (reason in the message)."""


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise UnreadableImage(f"empty image ({width}x{height})")
    if width * height > MAX_IMAGE_PIXELS:
        raise UnreadableImage(
            f"{width}x{height} exceeds the {MAX_IMAGE_PIXELS:,}-pixel limit (decompression bomb guard)")


def read_header(path: str | Path) -> ImageHeader:
    """Open ``path`` lazily and return its displayed size, without decoding pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                width, height = img.size
                fmt = img.format or "?"
                orientation = img.getexif().get(0x0112, 1)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImage(_reason(e)) from None
    _check_size(width, height)
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return ImageHeader(width, height, fmt)


def decode_reduced(source: bytes | str | Path | BinaryIO, factor: float = 1.0) -> tuple[Image.Image, float, float]:
    """Decode to 8-bit RGB (EXIF orientation applied), at a reduced scale when the format allows.

    Args:
        source: the encoded bytes, an image file's path, or a binary file object.
        factor: the fraction of the full size that must be kept in both directions; a JPEG
            is decoded at the smallest of 1/8, 1/4, 1/2, 1 that keeps at least that much
            (libjpeg's DCT scaling: pixels differ a little from a full decode + resize).
            1.0: a full decode.

    Returns:
        ``(image, fx, fy)``: the decoded image and its size relative to the full displayed
        size, per axis (1.0 when not reduced).

    Raises:
        UnreadableImage: corrupt, truncated, empty, too large or not an image.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(source) as img:
                full_w, full_h = img.size
                _check_size(full_w, full_h)
                swapped = img.getexif().get(0x0112, 1) in _TRANSPOSING_ORIENTATIONS
                if img.format == "JPEG" and factor < 1.0:
                    img.draft("RGB", (max(1, math.ceil(full_w * factor)), max(1, math.ceil(full_h * factor))))
                img.load()
                fx, fy = img.width / full_w, img.height / full_h
                img = _to_rgb(ImageOps.exif_transpose(img))
    except UnreadableImage:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as e:
        raise UnreadableImage(_reason(e)) from None
    return (img, fy, fx) if swapped else (img, fx, fy)


def load_rgb(path: str | Path | BinaryIO) -> Image.Image:
    """Decode ``path`` fully into an 8-bit RGB image with EXIF orientation applied.

    Args:
        path: image file, or a binary file object (a packed store's bytes).

    Raises:
        UnreadableImage: corrupt, truncated, empty, too large or not an image.
    """
    return decode_reduced(path)[0]


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparent pixels on white, as a viewer would show them, instead of
        # whatever colour the invisible pixels happen to store.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping at 255.
        import numpy as np
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, F, ...


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{type(e).__name__}: {text}"
