"""The settings of ``fixres adapt``: one frozen dataclass, validated on construction."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from ..core.errors import FixresError
from ..core.options import option
from ..core.runtime import RuntimeOptions
from ..data.transforms import check_crop_pct, check_resolution
from .surgery import METHODS

TRAINING_METHODS = ("fixres", "head", "full")
MOMENTUM, WEIGHT_DECAY, LR_PER_64, STEP_GAMMA, BN_MOMENTUM = 0.9, 1e-4, 1e-3, 0.1, 0.1
TENT_LR_PER_64 = 0.00025      # Tent's ImageNet setting: SGD, momentum 0.9, lr 0.00025 at batch 64, no decay
UNLABELLED_METHODS = ("tent", "bn")


def tent_lr(batch_size: int) -> float:
    """Tent's learning rate at ``batch_size``: its ImageNet setting, scaled linearly with the batch."""
    return TENT_LR_PER_64 * batch_size / 64


@dataclass(frozen=True, kw_only=True)
class AdaptOptions(RuntimeOptions):
    test_res: int = option(help="test resolution K_test to adapt the model to (pixels)")
    crop_pct: Optional[float] = option(None, "test centre-crop fraction at K_test (default: the model's)")
    method: Literal["fixres", "bn", "parametric", "head", "full", "tent"] = option(
        "fixres", "fixres: classifier + statistics of the last batch-norm (the paper's); bn: statistics only, "
                  "label-free; parametric: GEV equalisation of the pooled features, label-free; head: classifier "
                  "only; full: the whole network; tent: entropy minimisation on the normalisations' gamma/beta, "
                  "on --unlabelled images")
    epochs: int = option(30, "training epochs (fixres, head, full)")
    batch_size: int = option(64, "images per training step (and per evaluation batch)")
    lr: Optional[float] = option(None, "learning rate (default: 1e-3 x batch_size / 64, the paper's rule; tent: "
                                       "2.5e-4 x batch_size / 64, Tent's)")
    step_epochs: int = option(30, "divide the learning rate by 10 every this many epochs")
    aug: Literal["v1", "v2"] = option("v1", "v1: exactly the test preprocessing; v2: the authors' transforms_v2 "
                                            "(+ horizontal flip, colour jitter 0.05, a crop shifted horizontally over the "
                                            "whole horizontal margin of the resized image) (fixres, head, full)")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy (FixEfficientNet used 0.1)")
    train_bn_affine: bool = option(False, "fixres: also train the adapted batch-norm's gamma and beta")
    all_bn: bool = option(False, "bn: re-estimate every batch-norm, not only the last one(s)")
    images: Optional[int] = option(None, "use this many training images, drawn at random (default: all that the "
                                         "checkpoint did not hold out)")
    bn_module: Optional[tuple[str, ...]] = option(None, "batch-norm module name(s) to adapt instead of the "
                                                        "discovered ones", metavar="NAME")
    classifier_module: Optional[str] = option(None, "classifier module name, for models that timm does not describe",
                                              metavar="NAME")
    cache: bool = option(True, "train on cached features of the frozen layers (exact; falls back to the full "
                               "network when the model cannot be split or the cache does not fit in memory)")
    seed: int = option(0, "random seed (data order, image subset, augmentation)")
    unlabelled: Optional[str] = option(None, "a folder of unlabelled deployment images (any layout, no class "
                                             "folders): tent and bn adapt on them instead of --data's train/",
                                       metavar="DIR")
    tent_passes: int = option(1, "tent: passes over the unlabelled images, one step per batch (Tent's online "
                                 "setting: 1)")

    def __post_init__(self):
        super().__post_init__()
        check_resolution(self.test_res, "test_res")
        if self.crop_pct is not None:
            check_crop_pct(self.crop_pct)
        if self.method not in METHODS:
            raise FixresError(f"unknown adaptation method {self.method!r}; choose one of {', '.join(METHODS)}")
        for name in ("epochs", "step_epochs"):
            if getattr(self, name) < 1:
                raise FixresError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size < 2 and self.method in ("fixres", "full"):
            raise FixresError("batch_size must be at least 2: batch-norm statistics need two images")
        if self.lr is not None and self.lr <= 0:
            raise FixresError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.label_smoothing < 1:
            raise FixresError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.images is not None and self.images < 1:
            raise FixresError(f"images must be at least 1, got {self.images}")
        if self.all_bn and self.method != "bn":
            raise FixresError("--all-bn applies to --method bn only")
        if self.train_bn_affine and self.method != "fixres":
            raise FixresError("--train-bn-affine applies to --method fixres only")
        if self.method not in TRAINING_METHODS and (self.aug != "v1" or self.label_smoothing):
            raise FixresError(f"--aug and --label-smoothing apply to the training methods "
                              f"({', '.join(TRAINING_METHODS)}), not to {self.method}")
        if self.bn_module is not None and self.method not in ("fixres", "bn"):
            raise FixresError("--bn-module applies to --method fixres or bn")
        self._check_unlabelled()

    def _check_unlabelled(self) -> None:
        if self.method == "tent" and not self.unlabelled:
            raise FixresError("--method tent adapts on unlabelled deployment images: give --unlabelled DIR")
        if self.unlabelled and self.method not in UNLABELLED_METHODS:
            raise FixresError(f"--unlabelled applies to the label-free methods that adapt on the deployment images "
                              f"({', '.join(UNLABELLED_METHODS)}), not to {self.method}")
        if self.tent_passes < 1:
            raise FixresError(f"tent_passes must be at least 1, got {self.tent_passes}")
        if self.tent_passes != 1 and self.method != "tent":
            raise FixresError("--tent-passes applies to --method tent only")
        if self.method == "tent" and self.batch_size < 2:
            raise FixresError("batch_size must be at least 2: tent normalises with each batch's statistics")

    @property
    def trains(self) -> bool:
        return self.method in TRAINING_METHODS

    @property
    def base_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return tent_lr(self.batch_size) if self.method == "tent" else LR_PER_64 * self.batch_size / 64
