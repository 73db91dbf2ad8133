"""Train and test preprocessing: the one place where resize and crop geometry lives.

Both transforms take a decoded RGB PIL image and return a uint8 CHW tensor; mean/std
normalisation happens later on the device (:func:`normalize`), so a batch crosses to the
GPU as bytes, not floats. The operations are torchvision's own functional kernels, called
with parameters we sample ourselves from an explicit ``torch.Generator``: the random draw
of every image is then a pure function of its seed (reproducible across worker counts and
after a resume) and still consumes random numbers exactly as torchvision's
``RandomResizedCrop -> RandomHorizontalFlip -> ColorJitter`` would (tests check both).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ..core.errors import FixresError

INTERPOLATIONS = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}

DEFAULT_CROP_PCT = 0.875
DEFAULT_SCALE = (0.08, 1.0)
DEFAULT_RATIO = (3 / 4, 4 / 3)


def interpolation_mode(name: str) -> InterpolationMode:
    try:
        return INTERPOLATIONS[name]
    except KeyError:
        raise FixresError(f"unknown interpolation {name!r}; choose one of {', '.join(INTERPOLATIONS)}") from None


def check_resolution(value: int, what: str = "resolution", minimum: int = 8, maximum: int = 4096) -> int:
    """Validate a resolution given by the user (in pixels)."""
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise FixresError(f"{what} must be an integer number of pixels between {minimum} and {maximum}, got {value!r}")
    return value


MAX_GEOMETRIES = 64


def resolutions(values: "Sequence[str | int] | str | int") -> tuple[int, ...]:
    """The ``parse`` hook of a test-resolutions option (:func:`parse_resolutions`, one value or many)."""
    return tuple(parse_resolutions([values] if isinstance(values, (str, int)) else values))


def parse_resolutions(values: Sequence[str | int]) -> list[int]:
    """Resolutions from ``["32", "48"]`` or ranges ``["32:128:16"]`` (end included), sorted, unique.

    Raises:
        FixresError: malformed item, empty or descending range, a resolution outside
            [8, 4096] px, or more than ``MAX_GEOMETRIES`` values.
    """
    out: set[int] = set()
    for value in values:
        text = str(value).strip()
        try:
            numbers = [int(p) for p in text.split(":")]
        except ValueError:
            raise FixresError(f"test resolution {text!r} is not an integer or a START:END:STEP range") from None
        if len(numbers) == 1:
            out.add(check_resolution(numbers[0], "test resolution"))
            continue
        if len(numbers) != 3:
            raise FixresError(f"test resolution range {text!r} must be START:END:STEP (e.g. 32:128:16)")
        start, end, step = numbers
        if step <= 0 or start > end:
            raise FixresError(f"test resolution range {text!r} needs START <= END and STEP > 0")
        check_resolution(start, "test resolution")
        check_resolution(end, "test resolution")
        if (end - start) // step + 1 > MAX_GEOMETRIES:
            raise FixresError(f"test resolution range {text!r} has more than {MAX_GEOMETRIES} values")
        out.update(range(start, end + 1, step))
    if not out:
        raise FixresError("no test resolution given")
    if len(out) > MAX_GEOMETRIES:
        raise FixresError(f"{len(out)} test resolutions: at most {MAX_GEOMETRIES} per sweep")
    return sorted(out)


def check_geometries(test_res: Sequence[int], crop_pcts: Sequence[float]) -> list[tuple[int, float]]:
    """Every ``(test_res, crop_pct)`` pair, validated, crop_pct-major."""
    for r in test_res:
        check_resolution(r, "test resolution")
    pcts = list(dict.fromkeys(check_crop_pct(c) for c in crop_pcts))
    geometries = [(r, c) for c in pcts for r in test_res]
    if not geometries:
        raise FixresError("no test geometry to sweep")
    if len(geometries) > MAX_GEOMETRIES:
        raise FixresError(f"{len(geometries)} geometries (resolutions x crop_pcts): at most {MAX_GEOMETRIES} per sweep")
    return geometries


def check_crop_pct(value: float) -> float:
    if not isinstance(value, (int, float)) or not 0.1 <= value <= 1.0:
        raise FixresError(f"crop_pct must be in [0.1, 1.0] (fraction of the resized image kept by the centre crop), got {value!r}")
    return float(value)


def eval_geometry(test_res: int, crop_pct: float = DEFAULT_CROP_PCT) -> tuple[int, int]:
    """Return ``(resize_size, crop_size)`` of the test preprocessing.

    The shorter side is resized to ``floor(test_res / crop_pct)``, then the centre
    ``test_res x test_res`` is kept. ``floor`` (not ``round``) is timm's convention
    (``transforms_imagenet_eval``), so a checkpoint exported with ``test_input_size`` and
    ``crop_pct`` is evaluated by timm exactly as fixres evaluated it.
    """
    check_resolution(test_res, "test resolution")
    check_crop_pct(crop_pct)
    return math.floor(test_res / crop_pct), test_res


def sample_rrc_params(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                      generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """Sample a RandomResizedCrop box ``(top, left, h, w)`` exactly as torchvision does.

    Same algorithm and the same random-number consumption as
    ``torchvision.transforms.RandomResizedCrop.get_params``: up to 10 tries of an area
    fraction ~ U[scale] and a log-uniform aspect ratio, accepted if the box fits; then a
    centre crop of the whole image clamped to the ratio range.
    """
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class TrainTransform:
    """RandomResizedCrop(size, scale, ratio) + horizontal flip + optional colour jitter."""

    size: int
    scale: tuple[float, float] = DEFAULT_SCALE
    ratio: tuple[float, float] = DEFAULT_RATIO
    hflip: float = 0.5
    color_jitter: float = 0.0
    interpolation: str = "bilinear"

    def __post_init__(self):
        check_resolution(self.size, "train resolution")
        a, b = self.scale
        if not 0 < a <= b <= 1:
            raise FixresError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        r0, r1 = self.ratio
        if not 0 < r0 <= r1:
            raise FixresError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        if not 0 <= self.hflip <= 1 or self.color_jitter < 0:
            raise FixresError("hflip must be a probability and color_jitter non-negative")
        interpolation_mode(self.interpolation)

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        return F.pil_to_tensor(self.jitter(self.crop_flip(img, generator), generator))

    def crop_flip(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        """The geometric part: RandomResizedCrop then the flip (a recipe's policy runs between
        it and :meth:`jitter`; the draws stay in this order either way)."""
        top, left, h, w = sample_rrc_params(img.height, img.width, self.scale, self.ratio, generator)
        img = F.resized_crop(img, top, left, h, w, [self.size, self.size],
                             interpolation=interpolation_mode(self.interpolation), antialias=True)
        return flip_and_jitter(img, self.hflip, 0.0, generator)

    def jitter(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        """The colour jitter, if any."""
        return flip_and_jitter(img, 0.0, self.color_jitter, generator)


def flip_and_jitter(img: Image.Image, hflip: float, color_jitter: float,
                    generator: torch.Generator | None) -> Image.Image:
    """RandomHorizontalFlip(hflip) then ColorJitter(color_jitter) (if > 0), torchvision's draws."""
    if hflip > 0 and torch.rand(1, generator=generator).item() < hflip:
        img = F.horizontal_flip(img)
    if color_jitter > 0:
        img = color_jitter_image(img, color_jitter, generator)
    return img


def color_jitter_image(img: Image.Image, strength: float, generator: torch.Generator | None) -> Image.Image:
    """torchvision ``ColorJitter(strength, strength, strength)`` (no hue), same draws."""
    lo, hi = max(0.0, 1 - strength), 1 + strength
    order = torch.randperm(4, generator=generator).tolist()
    factors = [float(torch.empty(1).uniform_(lo, hi, generator=generator)) for _ in range(3)]
    ops = {0: F.adjust_brightness, 1: F.adjust_contrast, 2: F.adjust_saturation}
    for i in order:
        if i in ops:
            img = ops[i](img, factors[i])
    return img


CROP_MODES = ("center", "squash", "border")


def check_crop_mode(mode: str) -> str:
    if mode not in CROP_MODES:
        raise FixresError(f"crop_mode must be one of {', '.join(CROP_MODES)}, got {mode!r}")
    return mode


def eval_plan(height: int, width: int, test_res: int, crop_pct: float,
              crop_mode: str = "center") -> tuple[int, int, int, int]:
    """``(new_h, new_w, top, left)`` of the test preprocessing of one ``height x width`` image:
    resize to ``new_h x new_w``, then keep ``test_res x test_res`` from ``(top, left)`` (a
    negative offset pads), exactly as timm's ``transforms_imagenet_eval`` with ``crop_mode``:

    * ``center``: the shorter side to ``S = floor(test_res / crop_pct)``, the longer one
      truncated in proportion (torchvision's ``Resize(S)``), centre crop;
    * ``squash``: both sides to ``S`` (aspect ratio not kept), centre crop;
    * ``border``: the LONGER side to ``S`` (both divided by ``max(h, w) / S``, rounded),
      centre crop, padding an axis shorter than ``test_res`` (``CenterCropOrPad``).

    Crop offsets are torchvision's ``round((new - test_res) / 2)``; a padded axis starts at
    ``-(test_res - new) // 2``. This is the one place the test geometry of an image is
    computed (the PIL path and the device path both read it).
    """
    scale, crop = eval_geometry(test_res, crop_pct)
    if crop_mode == "squash":
        new_h = new_w = scale
    elif crop_mode == "border":
        ratio = max(height / scale, width / scale)
        new_h, new_w = round(height / ratio), round(width / ratio)
    elif width <= height:
        new_w, new_h = scale, int(scale * height / width)
    else:
        new_h, new_w = scale, int(scale * width / height)

    def offset(new: int) -> int:
        return -((crop - new) // 2) if crop > new else int(round((new - crop) / 2.0))
    return new_h, new_w, offset(new_h), offset(new_w)


@dataclass(frozen=True)
class EvalTransform:
    """The test preprocessing: resize by ``crop_mode`` (see :func:`eval_plan`; default: the
    shorter side to ``floor(test_res / crop_pct)``), then centre-crop ``test_res``; ``fill``
    is the colour of the ``border`` mode's padding (timm: ``round(255 * mean)``)."""

    test_res: int
    crop_pct: float = DEFAULT_CROP_PCT
    interpolation: str = "bilinear"
    crop_mode: str = "center"
    fill: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self):
        eval_geometry(self.test_res, self.crop_pct)
        interpolation_mode(self.interpolation)
        check_crop_mode(self.crop_mode)

    @property
    def resize_size(self) -> int:
        """``floor(test_res / crop_pct)``: the shorter side (center), both sides (squash) or the
        longer side (border) after the resize."""
        return eval_geometry(self.test_res, self.crop_pct)[0]

    @property
    def size(self) -> int:
        """The output side (as :attr:`TrainTransform.size`)."""
        return self.test_res

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        new_h, new_w, top, left = eval_plan(img.height, img.width, self.test_res, self.crop_pct, self.crop_mode)
        img = F.resize(img, [new_h, new_w], interpolation=interpolation_mode(self.interpolation), antialias=True)
        k = self.test_res
        if top < 0 or left < 0:          # border mode: pad the short axis with the fill colour, as timm does
            pad_t, pad_l = max(0, -top), max(0, -left)
            pad_b, pad_r = max(0, k - new_h - pad_t), max(0, k - new_w - pad_l)
            img = F.pad(img, [pad_l, pad_t, pad_r, pad_b], fill=list(self.fill))
            top, left = max(top, 0), max(left, 0)
        return F.pil_to_tensor(F.crop(img, top, left, k, k))


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float, the same arithmetic as ``ToTensor()`` then ``Normalize(mean, std)``."""
    x = images.float().div_(255)
    return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))


@dataclass(frozen=True)
class Normalizer:
    """What turns a uint8 batch into model input on the device: ``(x / 255 - mean) / std``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels_last: bool = False

    def __call__(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        x = images.to(device, non_blocking=True)
        x = normalize(x, torch.tensor(self.mean, device=device), torch.tensor(self.std, device=device))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
