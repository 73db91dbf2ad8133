"""Today's training recipes, through timm: per-image augmentation policies, random erasing,
mixup / CutMix with their losses, the weight EMA, timm's optimisers, progressive resizing.

timm (and torchvision) provide every part; this module only configures them, validates the
settings, and makes their randomness a function of the run's seed:

- timm's RandAugment / AutoAugment / AugMix draw from Python's ``random`` and numpy's global
  generators, torchvision's TrivialAugmentWide from torch's. :func:`seeded_rngs` runs a block
  with those global generators seeded and restores them afterwards. A per-image policy is
  seeded from the image's own generator (a function of ``(seed, epoch, index)``), so the same
  image gets the same augmentation whatever worker runs it, and after a resume.
- Random erasing and mixup act on the batch in the training process; they are seeded from
  ``(seed, step, share of the global batch)`` (:meth:`BatchRecipe.__call__`), so a resumed
  run replays them without storing their states, and two processes mix the same images as
  one process with two accumulation steps.

Each part's settings are a small frozen dataclass that checks itself (:class:`Erasing`,
:class:`Mixing`, :class:`Loss`, :class:`Ema`, :class:`ResolutionSchedule`); the training
configuration (:mod:`fixres.train.config`) builds them from its flat flags, so nothing here
imports it.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from ..core.errors import FixresError
from ..core.runtime import seeded_rngs
from ..data.transforms import TrainTransform, check_resolution, interpolation_mode

TRIVIAL_AUGMENT = ("trivialaugment", "trivial")   # torchvision's TrivialAugmentWide (timm has none)
# timm's optimisers with momentum-SGD-like learning rates (the others are Adam-like).
SGD_FAMILY = ("sgd", "momentum", "nesterov", "sgdw", "sgdp", "nesterovw", "lars", "larc", "nlars", "nlarc")


def _draw_seed(generator: torch.Generator | None) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


# ----------------------------------------------------------------------------- optimisers
def sgd_family(name: str) -> bool:
    """True for timm optimisers whose learning rates are momentum SGD's (0.1 per 256 images)."""
    return name.lower().split("_")[-1] in SGD_FAMILY


def timm_optimizers() -> list[str]:
    """Every optimiser name timm's ``create_optimizer_v2`` knows (without the ``lookahead_`` prefix)."""
    from timm.optim import list_optimizers
    return list(list_optimizers())


def check_optimizer(name: str) -> str:
    known = timm_optimizers()
    base = name.lower().split("_")
    if base[-1] in known and (len(base) == 1 or base[:-1] == ["lookahead"]):
        return name
    close = difflib.get_close_matches(name.lower(), known, n=3)
    hint = f" (did you mean {' or '.join(close)}?)" if close else f"; timm knows: {', '.join(sorted(known))}"
    raise FixresError(f"unknown optimizer {name!r}{hint}")


# ----------------------------------------------------------------------------- per-image policies
def augment_policy(policy: str, size: int, mean: tuple[float, ...] = (0.485, 0.456, 0.406),
                   interpolation: str = "bilinear") -> Callable[[Image.Image], Image.Image]:
    """The PIL -> PIL transform of an augmentation policy string, configured as timm's
    ``transforms_imagenet_train`` configures it (translation 45% of the size, fill = mean).

    Raises:
        FixresError: a policy string timm's parser refuses (its own message, one line).
    """
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform
    if policy.lower() in TRIVIAL_AUGMENT:
        from torchvision.transforms import TrivialAugmentWide
        return TrivialAugmentWide(interpolation=interpolation_mode(interpolation))
    hparams = dict(translate_const=int(size * 0.45), img_mean=tuple(min(255, round(255 * m)) for m in mean),
                   interpolation=Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR)
    try:
        if policy.startswith("rand"):
            return rand_augment_transform(policy, hparams)
        if policy.startswith("augmix"):
            hparams["translate_pct"] = 0.3
            return augment_and_mix_transform(policy, hparams)
        return auto_augment_transform(policy, hparams)
    except (AssertionError, KeyError, ValueError, IndexError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FixresError(f"auto_augment {policy!r}: {reason} (timm's syntax: rand-m9-mstd0.5-inc1, original, v0, "
                          f"3a, augmix-m5-w3; or trivialaugment)") from None


@dataclass(frozen=True)
class AugmentedTrainTransform:
    """RandomResizedCrop + flip (:class:`TrainTransform`'s exact draws), then a per-image policy
    (RandAugment, AutoAugment, AugMix or TrivialAugment), then colour jitter if any -- timm's
    order. The policy's draws come from a seed drawn from the image's generator."""

    base: TrainTransform
    policy: str
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)

    @property
    def size(self) -> int:
        return self.base.size

    @property
    def interpolation(self) -> str:
        return self.base.interpolation

    @property
    def color_jitter(self) -> float:
        return self.base.color_jitter

    @cached_property
    def _policy(self) -> Callable[[Image.Image], Image.Image]:
        return augment_policy(self.policy, self.base.size, self.mean, self.base.interpolation)

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        img = self.base.crop_flip(img, generator)
        with seeded_rngs(_draw_seed(generator)):
            img = self._policy(img)
        return TF.pil_to_tensor(self.base.jitter(img, generator))


def train_transform(base: TrainTransform, auto_augment: str | None, mean: tuple[float, ...]):
    """``base``, or ``base`` followed by the policy ``auto_augment``."""
    return AugmentedTrainTransform(base, auto_augment, tuple(mean)) if auto_augment else base


# ----------------------------------------------------------------------------- the parts' settings
def _unit(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise FixresError(f"{name} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class Erasing:
    """timm's ``RandomErasing`` (``--reprob``, ``--remode``, ``--recount``); ``prob`` 0: off."""

    prob: float = 0.0
    mode: str = "pixel"
    count: int = 1

    def __post_init__(self):
        _unit("random_erasing", self.prob)
        if self.count < 1:
            raise FixresError(f"random_erasing_count must be at least 1, got {self.count}")

    def record(self) -> dict | None:
        return {"prob": self.prob, "mode": self.mode, "count": self.count} if self.prob else None


@dataclass(frozen=True)
class Mixing:
    """timm's ``Mixup`` (``--mixup``, ``--cutmix``, ``--mixup-prob``, ``--mixup-switch-prob``,
    ``--mixup-mode``); both alphas 0: off."""

    mixup: float = 0.0
    cutmix: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: str = "batch"

    def __post_init__(self):
        _unit("mixup_prob", self.prob)
        _unit("mixup_switch_prob", self.switch_prob)
        if self.mixup < 0 or self.cutmix < 0:
            raise FixresError("mixup and cutmix alphas must not be negative")

    @property
    def on(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def record(self) -> dict | None:
        return {"mixup_alpha": self.mixup, "cutmix_alpha": self.cutmix, "prob": self.prob,
                "switch_prob": self.switch_prob, "mode": self.mode} if self.on else None


@dataclass(frozen=True)
class Loss:
    """The loss, chosen as timm's train.py chooses it: cross-entropy (soft-target under mixup) or
    ``BinaryCrossEntropy`` (ResNet Strikes Back), with label smoothing."""

    name: str = "ce"
    label_smoothing: float = 0.0
    bce_target_thresh: float | None = None

    def __post_init__(self):
        _unit("label_smoothing", self.label_smoothing)
        if self.bce_target_thresh is not None:
            if self.name != "bce":
                raise FixresError("bce_target_thresh applies to --loss bce only")
            if not 0 < self.bce_target_thresh < 1:
                raise FixresError(f"bce_target_thresh must be in (0, 1), got {self.bce_target_thresh}")


@dataclass(frozen=True)
class Ema:
    """timm's ``ModelEmaV3`` of the weights (``--model-ema-decay``, ``--model-ema-warmup``); ``decay``
    None: off."""

    decay: float | None = None
    warmup: bool = False

    def __post_init__(self):
        if self.decay is not None and not 0 < self.decay < 1:
            raise FixresError(f"ema_decay must be in (0, 1) (e.g. 0.9998), got {self.decay}")
        if self.warmup and self.decay is None:
            raise FixresError("--ema-warmup needs --ema-decay")

    def make(self, model: torch.nn.Module):
        """The EMA of ``model`` (a float32 copy on the model's device), or None when off."""
        from timm.utils import ModelEmaV3
        return None if self.decay is None else ModelEmaV3(model, decay=self.decay, use_warmup=self.warmup)

    def record(self) -> dict | None:
        return {"decay": self.decay, "warmup": self.warmup} if self.decay else None


# ----------------------------------------------------------------------------- batch recipe
class BatchRecipe:
    """Random erasing and mixup / CutMix on a normalised device batch, and the loss that goes
    with the targets they produce -- timm's ``RandomErasing``, ``Mixup``,
    ``SoftTargetCrossEntropy`` and ``BinaryCrossEntropy``, chosen as timm's train.py chooses."""

    def __init__(self, erasing: Erasing, mixing: Mixing, loss: Loss, num_classes: int, device: torch.device):
        from timm.data import Mixup
        from timm.data.random_erasing import RandomErasing
        from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy
        self.device = device
        self.erasing = (RandomErasing(erasing.prob, mode=erasing.mode, max_count=erasing.count, device=str(device))
                        if erasing.prob > 0 else None)
        self.mixup = (Mixup(mixup_alpha=mixing.mixup, cutmix_alpha=mixing.cutmix, prob=mixing.prob,
                            switch_prob=mixing.switch_prob, mode=mixing.mode, label_smoothing=loss.label_smoothing,
                            num_classes=num_classes) if mixing.on else None)
        if loss.name == "bce":   # smoothing applies to hard targets only: mixed ones are smoothed by Mixup
            self.criterion = BinaryCrossEntropy(smoothing=loss.label_smoothing, target_threshold=loss.bce_target_thresh)
        elif self.mixup is not None:
            self.criterion = SoftTargetCrossEntropy()
        else:
            smoothing = loss.label_smoothing
            self.criterion = lambda logits, y: F.cross_entropy(logits, y, label_smoothing=smoothing)

    @property
    def active(self) -> bool:
        return self.erasing is not None or self.mixup is not None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, targets)``: hard labels, or soft targets when mixed."""
        if not self.active:
            return x, y
        with seeded_rngs(seed, self.device):
            if self.erasing is not None:
                x = self.erasing(x)
            if self.mixup is not None:
                if len(x) % 2:
                    raise FixresError(f"mixup/CutMix needs an even number of images per process step, got {len(x)} "
                                      "(an unreadable image was dropped from the batch?)")
                x, y = self.mixup(x, y)
        return x, y


# ----------------------------------------------------------------------------- progressive resizing
@dataclass(frozen=True)
class ResolutionSchedule:
    """The training resolution of each epoch: ``start`` up to epoch ``ramp[0]``, ``end`` from
    epoch ``ramp[1]`` on, linear in between rounded to a multiple of ``step`` (FFCV's
    ``get_resolution``; epochs 0-based). ``start == end``: a constant resolution."""

    start: int
    end: int
    ramp: tuple[int, int] = (0, 1)
    step: int = 32

    @classmethod
    def plan(cls, train_res: int, epochs: int, start: int | None = None, ramp: tuple[int, int] | None = None,
             step: int = 32) -> "ResolutionSchedule":
        """The schedule of a run of ``epochs`` ending at ``train_res``, rising from ``start`` over
        ``ramp`` (default :func:`default_ramp`) when given; checked (one-line errors)."""
        if start is None:
            if ramp is not None:
                raise FixresError("--progressive-epochs needs --progressive-from (the first, lower, resolution)")
            return cls(train_res, train_res)
        check_resolution(start, "progressive_from")
        if start >= train_res:
            raise FixresError(f"progressive resizing must increase: progressive_from {start} is not below "
                              f"train_res {train_res} (the final training resolution)")
        if step < 1:
            raise FixresError(f"progressive_step must be at least 1, got {step}")
        if epochs < 2:
            raise FixresError("progressive resizing needs at least 2 epochs")
        a, b = default_ramp(epochs) if ramp is None else ramp
        if not 0 <= a < b <= epochs - 1:
            raise FixresError(f"progressive_epochs {a} {b}: the ramp must lie within the epochs, 0 <= A < B <= "
                              f"{epochs - 1} (0-based; the final resolution is trained from epoch B on)")
        return cls(start, train_res, (a, b), step)

    @property
    def progressive(self) -> bool:
        return self.start != self.end

    def res_at(self, epoch: int) -> int:
        a, b = self.ramp
        if not self.progressive or epoch <= a:
            return self.start
        if epoch >= b:
            return self.end
        value = self.start + (epoch - a) / (b - a) * (self.end - self.start)
        return min(self.end, max(self.start, int(np.round(value / self.step)) * self.step))

    def row(self) -> dict:
        return {"start": self.start, "end": self.end, "ramp_epochs": list(self.ramp), "step": self.step,
                "note": "train_res is the final training resolution; epochs are 0-based"}


def default_ramp(epochs: int) -> tuple[int, int]:
    """About FFCV's ratios (16 epochs: 11 -> 13; 88 epochs: 65 -> 76)."""
    end = max(1, min(epochs - 1, round(0.83 * epochs)))
    return min(end - 1, round(0.7 * epochs)), end
