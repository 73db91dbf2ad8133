"""RandomResizedCrop, flip and test-time resize + centre crop of whole batches, on any device.

Each output pixel of Pillow's resampling (what torchvision's PIL path calls) is a
weighted sum of input pixels whose weights depend only on the geometry: the filter
(triangle for bilinear, Keys a=-0.5 for bicubic) stretched by the downscale factor, which
is what makes it antialiased. :func:`axis_weights` computes exactly those weights
(``precompute_coeffs`` of Pillow's ``Resample.c``) for every image of a batch at once, on
the device (a few kernels per batch, whatever its size), and
:func:`resample` applies them as two batched matrix products (horizontal pass, rounding
to 8 bits as Pillow does, vertical pass). The result differs from the PIL path only by
Pillow's 22-bit fixed-point weights: at most 1 grey level, on a few pixels
(tests/test_fast_pipeline.py measures it).

Geometry is described per axis by :class:`Axis`: an extent of the image (a crop, or the
whole side) resampled to ``out_len`` samples, of which ``count`` starting at ``first`` are
kept. RandomResizedCrop is "crop, then resize the crop" (``first = 0``); the test
preprocessing is "resize the whole image, then take the centre" (``first`` = the centre
crop's offset), both with :func:`~fixres.data.transforms.eval_geometry`'s sizes and
torchvision's rounding. A horizontal flip reverses the order of the output columns.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch

from ..errors import FixresError
from .transforms import TrainTransform, eval_geometry, sample_rrc_params


FILTERS = {"bilinear": (1.0,), "bicubic": (2.0,)}   # Pillow's filter support (triangle; Keys cubic, a = -0.5)


def check_interpolation(name: str) -> str:
    if name not in FILTERS:
        raise FixresError(f"the fast pipeline resamples with {' or '.join(FILTERS)}, not {name!r} "
                          "(use the pil pipeline)")
    return name


class Axis(NamedTuple):
    """One axis of one image's geometry: ``length`` pixels from ``offset`` resampled to
    ``out_len``; outputs ``first .. first + count - 1`` are kept."""

    length: int
    offset: int
    out_len: int
    first: int


def crop_axes(top: int, left: int, height: int, width: int, size: int) -> tuple[Axis, Axis]:
    """(y, x) axes of ``resized_crop(img, top, left, height, width, [size, size])``."""
    return Axis(height, top, size, 0), Axis(width, left, size, 0)


def eval_axes(height: int, width: int, test_res: int, crop_pct: float) -> tuple[Axis, Axis]:
    """(y, x) axes of ``resize(img, [floor(test_res / crop_pct)])`` then ``center_crop(test_res)``
    with torchvision's rounding (new long side truncated, crop offset rounded)."""
    resize, crop = eval_geometry(test_res, crop_pct)
    if width <= height:
        new_w, new_h = resize, int(resize * height / width)
    else:
        new_h, new_w = resize, int(resize * width / height)
    top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))
    return Axis(height, 0, new_h, top), Axis(width, 0, new_w, left)


def draw_train(height: int, width: int, generator: torch.Generator | None,
               transform: TrainTransform) -> tuple[int, int, int, int, bool]:
    """``(top, left, h, w, flip)`` of one training image: the draws
    :class:`~fixres.data.transforms.TrainTransform` makes, in its order, from ``generator``
    (which is left where the colour jitter continues)."""
    top, left, h, w = sample_rrc_params(height, width, transform.scale, transform.ratio, generator)
    flip = transform.hflip > 0 and torch.rand(1, generator=generator).item() < transform.hflip
    return top, left, h, w, bool(flip)


def _bounds(axes: np.ndarray, count: int, support0: float) -> tuple[np.ndarray, np.ndarray]:
    """Per axis, the image pixels ``[lo, hi)`` that feed any kept output (first/last outputs'
    filter extents: they grow monotonically with the output index)."""
    length, offset, out_len, first = axes.T
    scale = length / out_len
    support = support0 * np.maximum(scale, 1.0)
    lo = np.maximum(np.trunc((first + 0.5) * scale - support + 0.5), 0.0)
    hi = np.minimum(np.trunc((first + count - 0.5) * scale + support + 0.5), length)
    return (lo + offset).astype(np.int64), np.maximum(hi + offset, lo + offset + 1).astype(np.int64)


def _kernel_torch(x: torch.Tensor, interpolation: str) -> torch.Tensor:
    x = x.abs()
    if interpolation == "bilinear":
        return (1.0 - x).clamp_(min=0.0)
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def axis_weights(axes: np.ndarray, lo: np.ndarray, span: int, count: int, interpolation: str,
                 device: torch.device) -> torch.Tensor:
    """Dense ``(N, count, span)`` matrices of Pillow's resampling weights: row ``k`` of axis
    ``n`` weighs the image pixels ``lo[n] .. lo[n] + span - 1`` into output ``k``.

    The same arithmetic as ``precompute_coeffs`` in Pillow's ``Resample.c``: the filter
    support scales with the downscale factor, taps are clipped to the resampled extent
    (``xmin``/``xmax`` truncated as C does) and normalised to sum to one. Computed on
    ``device`` (float64 for the tap bounds, so they are exact).
    """
    support0 = FILTERS[check_interpolation(interpolation)][0]
    a = torch.as_tensor(axes, dtype=torch.float64).to(device)
    length, offset, out_len, first = a.unbind(1)
    scale = length / out_len
    fscale = scale.clamp(min=1.0)
    support = support0 * fscale
    center = (first[:, None] + torch.arange(count, device=device, dtype=torch.float64) + 0.5) * scale[:, None]
    xmin = (center - support[:, None] + 0.5).trunc().clamp(min=0.0)
    xmax = torch.minimum((center + support[:, None] + 0.5).trunc(), length[:, None])
    pos = (torch.as_tensor(lo, dtype=torch.float64).to(device)[:, None] - offset[:, None]
           + torch.arange(span, device=device, dtype=torch.float64))          # (N, span): in extent coordinates
    x = pos[:, None, :]
    inside = (x >= xmin[..., None]) & (x < xmax[..., None])
    w = _kernel_torch((x - center[..., None] + 0.5) / fscale[:, None, None], interpolation) * inside
    total = w.sum(-1, keepdim=True)
    return (w / torch.where(total == 0, torch.ones_like(total), total)).float()


def resample(images: Sequence[torch.Tensor] | torch.Tensor, ys: Sequence[Axis], xs: Sequence[Axis], size: int,
             interpolation: str = "bilinear", flips: Sequence[bool] | None = None, chunk: int = 64) -> torch.Tensor:
    """Resample every image (uint8 CHW, any sizes, on one device) to ``size x size`` uint8.

    Args:
        images: N tensors ``(3, H_n, W_n)`` (or one ``(N, 3, H, W)`` tensor).
        ys, xs: each image's :class:`Axis` geometry.
        flips: flip image ``n`` horizontally (after resampling).
        chunk: images resampled together (bounds the temporary memory).

    Returns:
        ``(N, 3, size, size)`` uint8 on the images' device.
    """
    n = len(images)
    if n == 0:
        raise ValueError("no image to resample")
    support0 = FILTERS[check_interpolation(interpolation)][0]
    device = images[0].device
    out = torch.empty(n, 3, size, size, dtype=torch.uint8, device=device)
    ay, ax = np.asarray(ys, dtype=np.float64).reshape(-1, 4), np.asarray(xs, dtype=np.float64).reshape(-1, 4)
    flip_t = None if flips is None else torch.as_tensor(np.asarray(flips, dtype=bool)).to(device)
    for b in range(0, n, chunk):
        e = min(b + chunk, n)
        (lo_y, hi_y), (lo_x, hi_x) = _bounds(ay[b:e], size, support0), _bounds(ax[b:e], size, support0)
        sy, sx = int((hi_y - lo_y).max()), int((hi_x - lo_x).max())
        wy = axis_weights(ay[b:e], lo_y, sy, size, interpolation, device)
        wx = axis_weights(ax[b:e], lo_x, sx, size, interpolation, device)
        if flip_t is not None:        # a flipped image takes its output columns in reverse order
            wx = torch.where(flip_t[b:e, None, None], wx.flip(1), wx)
        buf = torch.zeros(e - b, 3, sy, sx, dtype=torch.float32, device=device)
        for i in range(e - b):
            img = images[b + i]
            buf[i, :, :hi_y[i] - lo_y[i], :hi_x[i] - lo_x[i]].copy_(img[:, lo_y[i]:hi_y[i], lo_x[i]:hi_x[i]])
        tmp = torch.matmul(buf, wx.transpose(1, 2).unsqueeze(1))         # horizontal pass: (n, 3, Sy, size)
        tmp.add_(0.5).floor_().clamp_(0, 255)                            # Pillow stores it as 8-bit
        res = torch.matmul(wy.unsqueeze(1), tmp)                         # vertical pass: (n, 3, size, size)
        out[b:e] = res.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)
    return out
