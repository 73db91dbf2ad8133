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

The matrix products read a padded float buffer ``(n, 3, sy, sx)`` per chunk of images:
each image's window (the pixels that feed its kept outputs) at the top-left corner, zeros
elsewhere. It is gathered without a per-image loop: :func:`flatten` puts the decoded
images of a batch end to end in one flat uint8 tensor (one concatenation, once per batch
however many geometries a sweep asks for), followed by a run of zeros; the host computes
where every buffer row starts in it (the image's offset + ``c*H*W + y*W + x``, or the
zeros for rows below a window) and sends those numbers, with the weights' geometry, in one
non-blocking copy; one ``index_select`` on a sliding-window view of the flat tensor then
copies ``sx`` pixels per row, and one masked pass zeroes the columns right of each window.
So a chunk costs a fixed number of kernels whatever its images, where a copy per image
cost 256 small kernels and as many Python calls per batch, in a thread that shares the GIL
with the training loop (benchmarks/profile_crop.py measures both).

Geometry is described per axis by :class:`Axis`: an extent of the image (a crop, or the
whole side) resampled to ``out_len`` samples, of which ``count`` starting at ``first`` are
kept. RandomResizedCrop is "crop, then resize the crop" (``first = 0``); the test
preprocessing is "resize the whole image, then take the centre" (``first`` = the centre
crop's offset), both with :func:`~fixres.data.transforms.eval_geometry`'s sizes and
torchvision's rounding. A horizontal flip reverses the order of the output columns.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import numpy as np
import torch

from ..core.errors import FixresError
from .transforms import TrainTransform, eval_plan, sample_rrc_params

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


def eval_axes(height: int, width: int, test_res: int, crop_pct: float, crop_mode: str = "center") -> tuple[Axis, Axis]:
    """(y, x) axes of the test preprocessing (:func:`~fixres.data.transforms.eval_plan`: the
    resize of ``crop_mode``, then the centre crop with torchvision's rounding). In ``border``
    mode an axis shorter than ``test_res`` starts at a negative ``first``: those outputs are
    padding (:func:`resample`'s ``fill``)."""
    new_h, new_w, top, left = eval_plan(height, width, test_res, crop_pct, crop_mode)
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


def axis_weights(axes: np.ndarray | torch.Tensor, lo: np.ndarray | torch.Tensor, span: int, count: int,
                 interpolation: str, device: torch.device) -> torch.Tensor:
    """Dense ``(N, count, span)`` matrices of Pillow's resampling weights: row ``k`` of axis
    ``n`` weighs the image pixels ``lo[n] .. lo[n] + span - 1`` into output ``k``.

    The same arithmetic as ``precompute_coeffs`` in Pillow's ``Resample.c``: the filter
    support scales with the downscale factor, taps are clipped to the resampled extent
    (``xmin``/``xmax`` truncated as C does) and normalised to sum to one. Computed on
    ``device`` (float64 for the tap bounds, so they are exact); ``axes`` and ``lo`` may
    already be there (:func:`resample` sends them with its other per-chunk numbers).
    """
    support0 = FILTERS[check_interpolation(interpolation)][0]
    a = torch.as_tensor(axes, dtype=torch.float64, device=device)
    length, offset, out_len, first = a.unbind(1)
    scale = length / out_len
    fscale = scale.clamp(min=1.0)
    support = support0 * fscale
    center = (first[:, None] + torch.arange(count, device=device, dtype=torch.float64) + 0.5) * scale[:, None]
    xmin = (center - support[:, None] + 0.5).trunc().clamp(min=0.0)
    xmax = torch.minimum((center + support[:, None] + 0.5).trunc(), length[:, None])
    pos = (torch.as_tensor(lo, dtype=torch.float64, device=device)[:, None] - offset[:, None]
           + torch.arange(span, device=device, dtype=torch.float64))          # (N, span): in extent coordinates
    x = pos[:, None, :]
    inside = (x >= xmin[..., None]) & (x < xmax[..., None])
    kept = first[:, None] + torch.arange(count, device=device, dtype=torch.float64)    # padding: no taps
    inside &= ((kept >= 0) & (kept < out_len[:, None]))[..., None]
    w = _kernel_torch((x - center[..., None] + 0.5) / fscale[:, None, None], interpolation) * inside
    total = w.sum(-1, keepdim=True)
    return (w / torch.where(total == 0, torch.ones_like(total), total)).float()


class FlatBatch:
    """The decoded images of a batch end to end in one 1-D tensor on their device, then a
    run of zeros as long as the widest image's row (the pad that buffer rows outside a crop
    window read).

    Built once per batch by :func:`flatten` and reusable for any number of geometries (a
    sweep resamples the same decoded images at several resolutions). The images' sizes and
    offsets stay on the host, where :func:`resample` computes its gather indices.
    """

    def __init__(self, pixels: torch.Tensor, heights: np.ndarray, widths: np.ndarray):
        self.pixels, self.heights, self.widths = pixels, heights, widths
        self.planes = heights * widths                                           # pixels per channel
        self.offsets = np.concatenate([[0], np.cumsum(3 * self.planes)[:-1]]).astype(np.int64)
        self.pad = int(3 * self.planes.sum())                                    # where the zeros start

    def __len__(self) -> int:
        return len(self.heights)

    @property
    def device(self) -> torch.device:
        return self.pixels.device


def flatten(images: Sequence[torch.Tensor] | torch.Tensor | FlatBatch) -> FlatBatch:
    """A :class:`FlatBatch` of N ``(3, H_n, W_n)`` tensors (or of one ``(N, 3, H, W)``): one
    ``torch.cat`` of flattened views, where filling a padded buffer took a copy per image."""
    if isinstance(images, FlatBatch):
        return images
    if len(images) == 0:
        raise ValueError("no image to resample")
    shapes = np.array([tuple(img.shape) for img in images], dtype=np.int64)
    if shapes.ndim != 2 or shapes.shape[1] != 3 or (shapes[:, 0] != 3).any():
        raise ValueError(f"resample takes 3-channel CHW images, got a shape {tuple(images[0].shape)}")
    if any(img.dtype != torch.uint8 for img in images):
        raise ValueError("resample takes uint8 images")
    parts = [images.reshape(-1)] if isinstance(images, torch.Tensor) else [img.reshape(-1) for img in images]
    zeros = images[0].new_zeros(int(shapes[:, 2].max()))       # a window is never wider than its image
    return FlatBatch(torch.cat(parts + [zeros]), shapes[:, 1], shapes[:, 2])


def _row_starts(flat: FlatBatch, sel: slice, lo_y: np.ndarray, hi_y: np.ndarray, lo_x: np.ndarray,
                sy: int) -> np.ndarray:
    """Where each row of a chunk's padded ``(n, 3, sy, sx)`` buffer starts in ``flat.pixels``:
    row ``i`` of channel ``c`` of image ``n`` is the image's row ``lo_y + i`` from column
    ``lo_x`` (the window at the buffer's top-left corner, as the per-image copy put it) while
    ``i`` is inside the window, and the zero pad below it."""
    i = np.arange(sy)
    starts = (flat.offsets[sel, None, None] + np.arange(3)[:, None] * flat.planes[sel, None, None]
              + ((lo_y[:, None] + i) * flat.widths[sel, None] + lo_x[:, None])[:, None, :])
    return np.where((i < (hi_y - lo_y)[:, None])[:, None, :], starts, flat.pad)


def _to_device(arrays: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """Host integer arrays on ``device`` (int64) in ONE transfer that does not block the
    host: a plain ``.to(cuda)`` from pageable memory synchronises the stream, which made
    the producer thread wait for the previous chunk's kernels at each of its copies."""
    packed = torch.from_numpy(np.concatenate([a.astype(np.int64, copy=False).ravel() for a in arrays]))
    if device.type == "cuda":
        packed = packed.pin_memory().to(device, non_blocking=True)
    return [t.view(a.shape) for t, a in zip(packed.split([a.size for a in arrays]), arrays)]


def _gather(flat: FlatBatch, starts: torch.Tensor, width: torch.Tensor, sx: int) -> torch.Tensor:
    """The padded float32 buffer ``(n, 3, sy, sx)``: the ``sx`` pixels from every row start
    (:func:`_row_starts`) in one ``index_select`` on a sliding-window view of the flat
    pixels (so the index has one entry per row, not per pixel), then the columns past each
    image's window ``width`` zeroed.

    Those columns hold the pixels that follow the window in memory (the rest of the row,
    the next row, the next image); their weights are exactly zero, so the output would not
    change, but zeroing them (one pass over uint8) keeps the buffer equal, element for
    element, to the one the per-image copy filled, and the product free of other images'
    pixels whatever the weights."""
    rows = flat.pixels.unfold(0, sx, 1).index_select(0, starts.view(-1)).view(*starts.shape, sx)
    rows.mul_((torch.arange(sx, device=rows.device) < width[:, None])[:, None, None, :])
    return rows.float()


def resample(images: Sequence[torch.Tensor] | torch.Tensor | FlatBatch, ys: Sequence[Axis], xs: Sequence[Axis],
             size: int, interpolation: str = "bilinear", flips: Sequence[bool] | None = None,
             chunk: int | None = None, fill: Sequence[int] | None = None) -> torch.Tensor:
    """Resample every image (uint8 CHW, any sizes, on one device) to ``size x size`` uint8.

    Args:
        images: N tensors ``(3, H_n, W_n)``, one ``(N, 3, H, W)`` tensor, or their
            :func:`flatten` (build it once to resample a batch at several geometries).
        ys, xs: each image's :class:`Axis` geometry.
        flips: flip image ``n`` horizontally (after resampling).
        fill: the colour of outputs outside an axis' resized extent (a negative ``first``, or
            ``first + size > out_len``: the ``border`` crop mode's padding); default black.
        chunk: images resampled together (bounds the temporary memory: the buffers are
            ``chunk x 3 x`` the chunk's largest window, the gather index one entry per
            buffer row). Default: 64 on CUDA (fewer, larger kernels), 8 elsewhere (on the
            CPU, 1.4-1.7x the images/s of 64: less padding to the largest window, buffers
            the allocator reuses; benchmarks/RESULTS.md).

    Raises:
        ValueError: no image, not 3-channel uint8 CHW, or a geometry reaching outside its image.

    Returns:
        ``(N, 3, size, size)`` uint8 on the images' device.
    """
    flat = flatten(images)
    n, device = len(flat), flat.device
    chunk = chunk or (64 if device.type == "cuda" else 8)
    support0 = FILTERS[check_interpolation(interpolation)][0]
    out = torch.empty(n, 3, size, size, dtype=torch.uint8, device=device)
    ay, ax = np.asarray(ys, dtype=np.int64).reshape(-1, 4), np.asarray(xs, dtype=np.int64).reshape(-1, 4)
    flip = np.zeros(n, dtype=np.int64) if flips is None else np.asarray(flips, dtype=np.int64)
    for b in range(0, n, chunk):
        e = min(b + chunk, n)
        (lo_y, hi_y), (lo_x, hi_x) = _bounds(ay[b:e], size, support0), _bounds(ax[b:e], size, support0)
        if (hi_y > flat.heights[b:e]).any() or (hi_x > flat.widths[b:e]).any():
            raise ValueError("a crop or resize geometry reaches outside its image")
        sy, sx = int((hi_y - lo_y).max()), int((hi_x - lo_x).max())
        starts = _row_starts(flat, slice(b, e), lo_y, hi_y, lo_x, sy)
        gy, gly, gx, glx, gflip, width, starts = _to_device(
            [ay[b:e], lo_y, ax[b:e], lo_x, flip[b:e], hi_x - lo_x, starts], device)
        wy = axis_weights(gy, gly, sy, size, interpolation, device)
        wx = axis_weights(gx, glx, sx, size, interpolation, device)
        if flips is not None:         # a flipped image takes its output columns in reverse order
            wx = torch.where(gflip.bool()[:, None, None], wx.flip(1), wx)
        buf = _gather(flat, starts, width, sx)
        tmp = torch.matmul(buf, wx.transpose(1, 2).unsqueeze(1))         # horizontal pass: (n, 3, Sy, size)
        tmp.add_(0.5).floor_().clamp_(0, 255)                            # Pillow stores it as 8-bit
        res = torch.matmul(wy.unsqueeze(1), tmp)                         # vertical pass: (n, 3, size, size)
        vertical = np.flatnonzero(vertical_first(ay[b:e], ax[b:e]))
        if len(vertical):      # the images Pillow resamples vertically first: the passes in its order
            sel = torch.as_tensor(vertical, device=device)
            tmp = torch.matmul(wy[sel].unsqueeze(1), buf[sel]).add_(0.5).floor_().clamp_(0, 255)
            res[sel] = torch.matmul(tmp, wx[sel].transpose(1, 2).unsqueeze(1))
        out[b:e] = res.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)
        if fill is not None:
            _pad(out[b:e], ay[b:e], ax[b:e], fill)
    return out


@functools.cache
def _pillow_may_start_vertically() -> bool:
    """Whether the installed Pillow runs the vertical pass first when an image loses much more
    height than width (Pillow 13 does: ``in_h - out_h > 2 (in_w - out_w)``; earlier versions
    always start horizontally). Found once by resampling a small image both ways."""
    from PIL import Image
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (60, 20, 3), dtype=np.uint8))
    ref = np.asarray(img.resize((18, 20), Image.Resampling.BICUBIC))
    vertical = np.asarray(img.resize((20, 20), Image.Resampling.BICUBIC).resize((18, 20), Image.Resampling.BICUBIC))
    return bool(np.array_equal(ref, vertical))


def vertical_first(ay: np.ndarray, ax: np.ndarray) -> np.ndarray:
    """Per image (rows of ``(length, offset, out_len, first)`` axes): does Pillow resample it
    vertically first? The two orders round the intermediate image differently (up to ~25 grey
    levels apart with bicubic on a squashed portrait image), so the device path follows Pillow."""
    if not _pillow_may_start_vertically():
        return np.zeros(len(ay), dtype=bool)
    shrink_y, shrink_x = ay[:, 0] - ay[:, 2], ax[:, 0] - ax[:, 2]
    return (shrink_y > 0) & (shrink_y > 2 * shrink_x)


def _pad(out: torch.Tensor, ay: np.ndarray, ax: np.ndarray, fill: Sequence[int]) -> None:
    """Paint ``fill`` where an output row or column lies outside its image's resized extent."""
    k = out.shape[-1]
    pos = np.arange(k)
    outside_y = ((ay[:, 3:4] + pos) < 0) | ((ay[:, 3:4] + pos) >= ay[:, 2:3])     # (n, k)
    outside_x = ((ax[:, 3:4] + pos) < 0) | ((ax[:, 3:4] + pos) >= ax[:, 2:3])
    if not (outside_y.any() or outside_x.any()):
        return
    mask = torch.as_tensor(outside_y[:, :, None] | outside_x[:, None, :]).to(out.device)    # (n, k, k)
    colour = torch.tensor(list(fill), dtype=torch.uint8, device=out.device)[None, :, None, None]
    out.copy_(torch.where(mask[:, None], colour, out))
