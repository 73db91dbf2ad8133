"""The images an adaptation sees: which training images, and with which preprocessing.

Adaptation uses the TRAINING images (never val, never the images the checkpoint held out:
``meta.holdout`` is rebuilt with :func:`~fixres.data.folder.split_holdout`) with the
TEST-time preprocessing at the new resolution: resize the shorter side to
``floor(K_test / crop_pct)``, centre crop (``aug="v1"``, :class:`~fixres.data.EvalTransform`).
``aug="v2"`` adds the paper's light augmentation, :class:`ShiftedCentreCrop`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Sampler
from torchvision.transforms.v2 import functional as F

from ..checkpoint import CheckpointMeta
from ..data.folder import SplitIndex, split_holdout
from ..data.loader import ImageDataset, make_loader, mix_seed
from ..data.transforms import EvalTransform, eval_geometry, flip_and_jitter, interpolation_mode
from ..errors import FixresError
from ..runtime import Dist
from ..evaluate import load_split


@dataclass(frozen=True)
class ShiftedCentreCrop:
    """The paper's "v2" fine-tuning augmentation around the test preprocessing.

    Resize the shorter side to ``floor(test_res / crop_pct)`` (as at test time), crop
    ``test_res x test_res`` at the vertical centre and at a horizontal position shifted
    from the centre by a uniform integer in ``[-m, m]``, ``m = (resize - test_res) // 2``
    (the margin the centre crop leaves on the shorter side; clamped to the image), flip
    horizontally with probability 0.5, then colour jitter (brightness, contrast,
    saturation) of strength ``color_jitter``. Every draw comes from the generator.
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
        margin = (resize - crop) // 2
        shift = int(torch.randint(-margin, margin + 1, (1,), generator=generator)) if margin > 0 else 0
        top = int(round((height - crop) / 2.0))        # torchvision's centre_crop convention
        left = min(max(int(round((width - crop) / 2.0)) + shift, 0), width - crop)
        img = F.crop(img, top, left, crop, crop)
        return F.pil_to_tensor(flip_and_jitter(img, self.hflip, self.color_jitter, generator))


def adapt_transform(aug: str, test_res: int, crop_pct: float, interpolation: str):
    """The preprocessing of the adaptation images: ``v1`` = exactly the test one."""
    if aug == "v1":
        return EvalTransform(test_res, crop_pct, interpolation)
    return ShiftedCentreCrop(test_res, crop_pct, interpolation)


@dataclass(frozen=True)
class Images:
    train: SplitIndex       # the adaptation images (held-out ones removed, optionally a subset)
    val: SplitIndex         # where before/after accuracy is measured
    held_out: int           # training images excluded because the checkpoint held them out
    available: int          # training images the adaptation could use


def adaptation_images(data: str | Path, meta: CheckpointMeta, images: int | None, seed: int) -> Images:
    """Training images (minus the checkpoint's held-out ones; ``images`` of them at random
    if given: a fixed subset for a seed) and the val split, classes checked."""
    train = load_split(data, "train", meta.class_names)
    val = load_split(data, "val", meta.class_names)
    held = 0
    if meta.holdout:
        train, out = split_holdout(train, float(meta.holdout["fraction"]), int(meta.holdout["seed"]))
        held = len(out)
    available = len(train)
    if images is not None and images < available:
        g = torch.Generator().manual_seed(mix_seed(seed, 0xADA))
        keep = sorted(torch.randperm(available, generator=g)[:images].tolist())
        train = SplitIndex(train.root, train.classes, [train.samples[i] for i in keep], train.skipped)
    if not len(train):
        raise FixresError(f"{data}/train has no training image left for adaptation")
    return Images(train, val, held, available)


class Sequential(Sampler):
    """Batches ``0..n-1`` in order; with a seed, items are ``(index, mix_seed(seed, index))``
    so that a random transform draws the same for an image whatever the batching.
    Rank ``r`` of ``W`` takes batches ``r, r+W, ...``: every image exactly once overall."""

    def __init__(self, n: int, batch_size: int, seed: int | None = None, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world

    def __len__(self) -> int:
        return len(range(self.rank, -(-self.n // self.batch_size), self.world))

    def __iter__(self):
        for begin in range(self.rank * self.batch_size, self.n, self.batch_size * self.world):
            idx = range(begin, min(begin + self.batch_size, self.n))
            yield list(idx) if self.seed is None else [(i, mix_seed(self.seed, i)) for i in idx]


def ordered_loader(split: SplitIndex, transform, batch_size: int, workers: int | None, *, seed: int | None = None,
                   pin_memory: bool = False, dist_env: Dist = Dist()):
    """Every image of ``split`` once, in index order (for caching and statistics); under
    several processes each rank gets its share of the batches."""
    sampler = Sequential(len(split), batch_size, seed, dist_env.rank, dist_env.world)
    return make_loader(ImageDataset(split, transform), batch_sampler=sampler, workers=workers, pin_memory=pin_memory)
