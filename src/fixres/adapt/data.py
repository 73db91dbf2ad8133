"""The images an adaptation sees: which training images, and with which preprocessing.

Adaptation uses the TRAINING images (never val, never the images the checkpoint held out:
rebuilt by :meth:`~fixres.models.checkpoint.CheckpointMeta.split_training_images`, which refuses
a training split that is not the run's) with the
TEST-time preprocessing at the new resolution: resize the shorter side to
``floor(K_test / crop_pct)``, centre crop (``aug="v1"``, :class:`~fixres.data.EvalTransform`).
``aug="v2"`` adds the authors' light augmentation, :class:`ShiftedCentreCrop`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from ..core.errors import FixresError
from ..data.folder import content_sha256, scan_unlabelled
from ..data.index import SplitIndex
from ..data.loader import mix_seed
from ..data.preprocessing import Preprocessing
from ..data.transforms import eval_geometry, flip_and_jitter, interpolation_mode
from ..measure.infer import load_split
from ..models.checkpoint import CheckpointMeta
from ..models.labels import Binding


@dataclass(frozen=True)
class ShiftedCentreCrop:
    """The authors' "v2" fine-tuning augmentation (``transforms_v2.py`` of facebookresearch/FixRes),
    around our test preprocessing.

    Resize the shorter side to ``floor(test_res / crop_pct)`` (as at test time; the authors'
    ``Resize`` sets the image HEIGHT to that size, a known pitfall we do not copy), crop
    ``test_res x test_res`` at the vertical centre and at a horizontal offset drawn as theirs
    is: ``j = round((W - test_res) / 2)`` the horizontal margin of the RESIZED image, a
    magnitude uniform in ``0..j`` and a sign of +-1 each with probability 1/2, so the crop
    moves over the whole horizontal margin (about +-100 px for a 4:3 image at 384 px; 0 for a
    portrait image, whose horizontal margin is the shorter side's). Then a horizontal flip with
    probability 0.5 and colour jitter (brightness, contrast, saturation) of strength
    ``color_jitter`` (they flip and jitter before the crop: both commute with it, the flip
    because the shift's law is symmetric). Every draw comes from the generator.
    """

    test_res: int
    crop_pct: float
    interpolation: str = "bilinear"
    hflip: float = 0.5
    color_jitter: float = 0.05

    def __post_init__(self):
        eval_geometry(self.test_res, self.crop_pct)
        interpolation_mode(self.interpolation)

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        resize, crop = eval_geometry(self.test_res, self.crop_pct)
        img = F.resize(img, [resize], interpolation=interpolation_mode(self.interpolation), antialias=True)
        width, height = img.size
        top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))   # torchvision's centre
        left = min(left + horizontal_shift(left, generator), width - crop)   # their odd margins can overrun by 1 px
        img = F.crop(img, top, left, crop, crop)
        return F.pil_to_tensor(flip_and_jitter(img, self.hflip, self.color_jitter, generator))


def horizontal_shift(margin: int, generator: torch.Generator | None) -> int:
    """The authors' shift of the centre crop: ``sign * m``, ``m`` uniform in ``0..margin``, sign +-1."""
    if margin <= 0:
        return 0
    magnitude = int(torch.randint(0, margin + 1, (1,), generator=generator))
    return magnitude if int(torch.randint(0, 2, (1,), generator=generator)) == 0 else -magnitude


def adapt_transform(aug: str, prep: Preprocessing):
    """The preprocessing of the adaptation images: ``v1`` = exactly the test one."""
    if aug == "v1":
        return prep.test_view()
    return ShiftedCentreCrop(prep.test_res, prep.crop_pct, prep.interpolation)


@dataclass(frozen=True)
class Images:
    train: SplitIndex       # the adaptation images (held-out ones removed, optionally a subset)
    val: SplitIndex         # where before/after accuracy is measured
    held_out: int           # training images excluded because the checkpoint held them out
    available: int          # training images the adaptation could use
    held: SplitIndex | None = None   # those held-out images (where a ladder's budget rule chooses)
    unlabelled: dict | None = None   # ``train`` is an unlabelled folder: its path, size and SHA-256


def adaptation_images(data: str | Path, meta: CheckpointMeta, images: int | None, seed: int,
                      labels: Binding | None = None) -> Images:
    """Training images (minus the checkpoint's held-out ones; ``images`` of them at random
    if given: a fixed subset for a seed) and the val split, their folders bound to the
    model's classes (``labels``; default: by name)."""
    labels = meta.class_names if labels is None else labels
    train = load_split(data, "train", labels)
    val = load_split(data, "val", labels)
    train, out = meta.split_training_images(train)      # refused when train/ is not the run's
    held = len(out)
    available = len(train)
    train = _subset(train, images, seed)
    if not len(train):
        raise FixresError(f"{data}/train has no training image left for adaptation")
    return Images(train, val, held, available, out)


def unlabelled_images(folder: str | Path, data: str | Path, meta: CheckpointMeta, images: int | None, seed: int,
                      labels: Binding | None = None) -> Images:
    """The images of an unlabelled folder (any layout; ``images`` of them at random if given)
    as the adaptation images, the val split of ``data`` for before/after; the folder is
    recorded by its path, its number of images and the SHA-256 of the files used."""
    labels = meta.class_names if labels is None else labels
    found = scan_unlabelled(folder)
    val = load_split(data, "val", labels)
    train = _subset(found, images, seed)
    record = {"path": str(Path(folder).resolve()), "images": len(train), "found": len(found),
              "refused_by_scan": len(found.skipped), "sha256": content_sha256(train)}
    return Images(train, val, 0, len(found), None, record)


def _subset(index: SplitIndex, images: int | None, seed: int) -> SplitIndex:
    """``images`` of the index at random (a fixed subset for a seed), or all of them."""
    if images is None or images >= len(index):
        return index
    g = torch.Generator().manual_seed(mix_seed(seed, 0xADA))
    return index.positions(torch.randperm(len(index), generator=g)[:images].tolist())
