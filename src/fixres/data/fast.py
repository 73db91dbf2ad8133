"""Fast decoding: reduced-size JPEG decoding on the CPU, batched nvJPEG on the GPU.

CPU (:func:`~fixres.data.decode.decode_reduced`): libjpeg can decode a JPEG directly at 1/2, 1/4 or 1/8 of
its size by scaling the inverse DCT (Pillow's ``draft``), several times faster than a full
decode. The fast path asks for the smallest scale that still leaves every output pixel
at least one decoded pixel (the crop keeps at least ``size`` pixels per side), then
resamples the crop box straight from the reduced image (Pillow's ``resize(box=...)``,
antialiased). Pixels differ a little from "full decode, then resize": the DCT scaling is
a slightly different low-pass filter than Pillow's (measured in tests and benchmarks).
Without a reduction (``draft=False``, or when a crop would be upsampled) the result is
exactly the PIL path's for the test preprocessing.

GPU (:func:`decode_on_device`): ``torchvision.io.decode_jpeg`` on a list of encoded
images, batched on the device. nvJPEG refuses some files (CMYK, progressive or
lossless JPEGs on some versions, anything not a JPEG): those are decoded by Pillow on the
CPU instead, one by one, and counted in :class:`DecodeStats`.
"""
from __future__ import annotations

import io
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from .decode import UnreadableImage, load_rgb
from .pack import CODEC_RAW, ppm_pixels

RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def resize_box(img: Image.Image, box: tuple[float, float, float, float], size: int, interpolation: str,
               flip: bool = False, crop_first: bool = False) -> Image.Image:
    """Resample the ``(left, top, right, bottom)`` box of ``img`` to ``size x size``.

    ``crop_first``: the filter sees only the pixels of the box (rounded outwards), as in
    torchvision's crop-then-resize (RandomResizedCrop); otherwise it also reads the
    pixels around the box, as a resize of the whole image followed by a crop does.
    """
    left, top, right, bottom = box
    box = (max(0.0, left), max(0.0, top), min(float(img.width), right), min(float(img.height), bottom))
    if crop_first:
        region = (math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3]))
        img = img.crop(region)
        box = (box[0] - region[0], box[1] - region[1], box[2] - region[0], box[3] - region[1])
    out = img.resize((size, size), RESAMPLE[interpolation], box=box)
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else out


def full_pixels(data: bytes, codec: int) -> torch.Tensor:
    """Decode on the CPU, full size: uint8 CHW (a raw PPM is a copy; anything else goes
    through :func:`~fixres.data.decode.load_rgb`)."""
    if codec == CODEC_RAW:
        try:
            return torch.from_numpy(ppm_pixels(data).copy()).permute(2, 0, 1)
        except (ValueError, IndexError) as e:
            raise UnreadableImage(f"bad raw sample: {e}") from None
    return F.pil_to_tensor(load_rgb(io.BytesIO(data)))


def as_byte_tensor(data: bytes) -> torch.Tensor:
    """Encoded bytes as a 1-D uint8 tensor (what ``decode_jpeg`` takes)."""
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())


@dataclass
class DecodeStats:
    """Where images of a pass were decoded (kept by the process that runs the device decoder)."""

    device: int = 0                                   # decoded by nvJPEG (or torchvision's CPU decode_jpeg)
    cpu: Counter = field(default_factory=Counter)     # decoded by Pillow, by reason (png, progressive, refused, ...)
    skipped: int = 0                                  # unreadable

    def row(self) -> dict:
        return {"device_decoded": self.device, "cpu_decoded": sum(self.cpu.values()), "cpu_reasons": dict(self.cpu),
                "skipped": self.skipped}


def gpu_decode_available() -> bool:
    """torchvision's nvJPEG decoder can be called (CUDA build and a GPU)."""
    if not torch.cuda.is_available():
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return True


def decode_on_device(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Batched ``decode_jpeg`` of uint8 byte tensors on ``device`` (RGB, CHW uint8).

    If the batched call fails, every image is retried alone; an image the decoder refuses
    comes back ``None`` (the caller decodes it on the CPU).
    """
    from torchvision.io import ImageReadMode, decode_jpeg
    if not datas:
        return []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
        return list(out) if isinstance(out, (list, tuple)) else [out]
    except RuntimeError:
        pass
    single = []
    for data in datas:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                single.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            single.append(None)
    return single
