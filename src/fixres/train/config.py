"""The settings of ``fixres train``: one frozen dataclass, validated on construction."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import yaml

from ..core.errors import FixresError
from ..core.options import option
from ..core.runtime import RuntimeOptions
from ..models.sizes import size_kwargs
from ..data.transforms import DEFAULT_CROP_PCT, check_crop_pct, check_resolution, interpolation_mode, resolutions
from .recipes import (Ema, Erasing, Loss, Mixing, ResolutionSchedule, augment_policy, check_optimizer, default_ramp,
                      sgd_family)

# Settings that may change when a run is resumed; any other difference is refused.
RESUMABLE_CHANGES = ("out", "epochs", "workers", "device", "eval_every", "checkpoint_every", "keep_last",
                     "pipeline", "compile", "log_tensorboard", "log_wandb", "wandb_project")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(RuntimeOptions):
    """Every setting of a training run. The compute settings are :class:`RuntimeOptions`'s, with
    a training run's own defaults and meanings (a global batch, autocast on a GPU)."""

    data: str = option(help="dataset directory holding train/<class>/ and val/<class>/")
    out: str = option(help="run directory to create (or to continue with --resume)")
    model: str = option("resnet50", "timm model name")
    pretrained: bool = option(False, "start from timm's pretrained weights (downloads them: needs internet)")
    weights: Optional[str] = option(None, "start from a local weights file (.safetensors, or a torch file loaded weights-only); "
                                          "a classifier of another size is re-initialised")
    new_classifier: bool = option(False, "with --weights: re-initialise the classifier even when its size fits "
                                         "(transfer to other classes that happen to be as many)")
    train_res: int = option(224, "training resolution K_train (pixels)")
    test_res: Optional[int] = option(None, "resolution of the per-epoch evaluation (default: the training resolution)")
    crop_pct: Optional[float] = option(None, "test-time centre crop fraction: resize shorter side to test_res/crop_pct "
                                             f"(default: the one the --pretrained / --weights model declares, else "
                                             f"{DEFAULT_CROP_PCT})")
    interpolation: Optional[Literal["bilinear", "bicubic"]] = option(
        None, "resampling filter for train and test resizes (default: the one the --pretrained / --weights model "
              "declares, else bilinear)")
    scale: tuple[float, float] = option((0.08, 1.0), "RandomResizedCrop area range", metavar=("MIN", "MAX"))
    ratio: tuple[float, float] = option((3 / 4, 4 / 3), "RandomResizedCrop aspect-ratio range", metavar=("MIN", "MAX"))
    hflip: float = option(0.5, "horizontal flip probability")
    color_jitter: float = option(0.0, "brightness/contrast/saturation jitter strength (0: off)")
    holdout: float = option(0.0, "fraction of each training class held out of training, on which later commands "
                                 "(fixres sweep) choose the test resolution without touching val")
    epochs: int = option(90, "number of epochs")
    batch_size: int = option(256, "global batch size (over all processes and accumulation steps)")
    accum_steps: int = option(1, "gradient accumulation steps per optimiser step")
    optimizer: str = option("sgd", "any optimiser name of timm's create_optimizer_v2 (sgd, momentum, adamw, lamb, "
                                   "lars, lion, ...; `sgd` is classical momentum unless --nesterov, as before)")
    lr: Optional[float] = option(None, "peak learning rate (default: 0.1 x batch/256 for the SGD family, "
                                       "1e-3 x batch/512 for the others)")
    momentum: float = option(0.9, "momentum (optimisers that have one)")
    nesterov: bool = option(False, "Nesterov momentum (sgd)")
    weight_decay: Optional[float] = option(None, "weight decay, not applied to norms and biases "
                                                 "(default: 1e-4 for SGD, 0.05 for AdamW)")
    schedule: Literal["cosine", "step", "linear"] = option("cosine", "learning-rate schedule after warm-up (linear: "
                                                                     "to min_lr at the end, FFCV's cyclic schedule)")
    warmup_epochs: float = option(1.0, "linear warm-up length in epochs")
    step_epochs: int = option(30, "step schedule: decay every this many epochs")
    step_gamma: float = option(0.1, "step schedule: decay factor")
    min_lr: float = option(0.0, "cosine schedule: final learning rate")
    label_smoothing: float = option(0.0, "label smoothing of the loss (with mixup/CutMix: of the mixed targets)")
    loss: Literal["ce", "bce"] = option("ce", "ce: cross-entropy (timm SoftTargetCrossEntropy under mixup); bce: timm "
                                              "BinaryCrossEntropy (ResNet Strikes Back)")
    bce_target_thresh: Optional[float] = option(None, "bce: binarise the (mixed) targets above this value "
                                                      "(timm --bce-target-thresh)")
    auto_augment: Optional[str] = option(None, "per-image policy in timm's syntax: rand-m9-mstd0.5-inc1 (RandAugment), "
                                               "original / v0 / 3a (AutoAugment), augmix-m5-w3 (AugMix); or "
                                               "trivialaugment (torchvision's TrivialAugmentWide) (timm --aa)")
    random_erasing: float = option(0.0, "random erasing probability (timm RandomErasing on the normalised batch; "
                                        "timm --reprob)")
    random_erasing_mode: Literal["const", "rand", "pixel"] = option("pixel", "random erasing fill (timm --remode)")
    random_erasing_count: int = option(1, "random erasing: at most this many boxes per image (timm --recount)")
    mixup: float = option(0.0, "mixup alpha, 0: off (timm Mixup, --mixup)")
    cutmix: float = option(0.0, "CutMix alpha, 0: off (timm Mixup, --cutmix)")
    mixup_prob: float = option(1.0, "probability of mixing a batch (timm --mixup-prob)")
    mixup_switch_prob: float = option(0.5, "with both on: probability of CutMix instead of mixup (timm --mixup-switch-prob)")
    mixup_mode: Literal["batch", "pair", "elem"] = option("batch", "one mix per batch, per pair or per image "
                                                                   "(timm --mixup-mode)")
    ema_decay: Optional[float] = option(None, "keep an exponential moving average of the weights with this decay, "
                                              "evaluated every epoch and saved in checkpoints (timm ModelEmaV3, "
                                              "--model-ema-decay); off when not given")
    ema_warmup: bool = option(False, "EMA decay warm-up (timm --model-ema-warmup)")
    aug_repeats: int = option(1, "repeated augmentation: each sampled image appears this many times per epoch with "
                                 "different crops, the copies spread over processes (timm RepeatAugSampler, "
                                 "--aug-repeats; 1: off)")
    switchable_res: Optional[tuple[int, ...]] = option(
        None, "train ONE network for these resolutions jointly, the RS-Nets baseline: shared weights, a private "
              "batch-norm per resolution, every step the losses of every resolution summed (one crop per image at "
              "--train-res, the largest, resized to the others); the run ends with a ladder, RUN/ladder",
        parse=resolutions, type=str, metavar="RES")
    progressive_from: Optional[int] = option(None, "progressive resizing: train at this resolution first, rising to "
                                                   "--train-res (the final one) over --progressive-epochs (FFCV min_res)")
    progressive_epochs: Optional[tuple[int, int]] = option(
        None, "the ramp: lowest resolution up to epoch A, --train-res from epoch B on, linear in between (0-based "
              "epochs, FFCV start_ramp / end_ramp; default: 70% and 83% of the epochs, FFCV's ratios; stored resolved)",
        metavar=("A", "B"))
    progressive_step: int = option(32, "round the ramp's resolutions to a multiple of this (FFCV: 32)")
    clip_grad: Optional[float] = option(None, "clip the gradient norm to this value")
    amp: Literal["auto", "bf16", "fp16", "none"] = option("auto", "mixed precision (auto: bf16 on a GPU that has it, "
                                                                  "none on CPU; timm's train.py needs --amp for it)")
    channels_last: bool = option(False, "channels_last memory format")
    sync_bn: bool = option(False, "synchronise batch-norm statistics across processes (distributed runs)")
    drop_rate: Optional[float] = option(None, "dropout before the classifier (timm drop_rate)")
    drop_path_rate: Optional[float] = option(None, "stochastic depth rate (timm drop_path_rate)")
    model_kwargs: tuple[str, ...] = option((), "more timm.create_model arguments as KEY=VALUE, the value read as YAML "
                                               "(patch_size=8, drop_block_rate=0.1; timm --model-kwargs); recorded in "
                                               "the checkpoint, which rebuilds the same model", metavar="KEY=VALUE")
    seed: int = option(0, "random seed (data order, augmentation, initialisation)")
    workers: Optional[int] = option(None, "data-loading processes per training process (default: cores - 1, at most 16)")
    pipeline: Literal["auto", "pil", "fast"] = option(
        "auto", "data pipeline: pil (Pillow decode + torchvision transforms, the reference), fast (reduced-size or "
                "GPU JPEG decoding, crops resampled in batches; same crop boxes), auto (fast on CUDA, pil on CPU)")
    compile: bool = option(False, "torch.compile the training model (measured not faster for ResNet-50 on an H200)")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    eval_every: int = option(1, "evaluate every this many epochs (and always after the last)")
    checkpoint_every: int = option(0, "also checkpoint every this many optimiser steps (0: at epoch ends only)")
    keep_last: int = option(2, "number of recent checkpoints kept (the best one is always kept)")
    log_tensorboard: Optional[bool] = option(None, "also write TensorBoard event files into RUN/tensorboard (default: "
                                                   "when the tensorboard package is installed, pip install "
                                                   "'fixres[tensorboard]')")
    log_wandb: bool = option(False, "also log to Weights & Biases (needs wandb; WANDB_MODE=offline works without "
                                    "network) (timm --log-wandb)")
    wandb_project: Optional[str] = option(None, "Weights & Biases project (default: fixres)")

    def __post_init__(self):
        super().__post_init__()
        check_resolution(self.train_res, "train_res")
        if self.test_res is not None:
            check_resolution(self.test_res, "test_res")
        if self.crop_pct is not None:
            check_crop_pct(self.crop_pct)
        if self.interpolation is not None:
            interpolation_mode(self.interpolation)
        positive = dict(epochs=self.epochs, accum_steps=self.accum_steps,
                        eval_every=self.eval_every, keep_last=self.keep_last)
        for name, value in positive.items():
            if value < 1:
                raise FixresError(f"{name} must be at least 1, got {value}")
        check_batch_split(self, world=1)   # the processes are known at the start: check_batch
        for name in ("momentum", "hflip"):
            if not 0 <= getattr(self, name) <= 1:
                raise FixresError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.lr is not None and self.lr <= 0:
            raise FixresError(f"lr must be positive, got {self.lr}")
        if self.warmup_epochs < 0 or self.checkpoint_every < 0 or self.color_jitter < 0:
            raise FixresError("warmup_epochs, checkpoint_every and color_jitter must not be negative")
        if not 0 <= self.holdout < 1:
            raise FixresError(f"holdout must be in [0, 1), got {self.holdout}")
        if self.pretrained and self.weights:
            raise FixresError("give either --pretrained or --weights, not both")
        if self.progressive_from is not None and self.progressive_epochs is None and self.epochs >= 2:
            object.__setattr__(self, "progressive_epochs", default_ramp(self.epochs))   # resolved once, stored
        parse_model_kwargs(self.model_kwargs)
        check_optimizer(self.optimizer)
        if self.auto_augment is not None:
            augment_policy(self.auto_augment, self.train_res)
            if self.color_jitter and "3a" not in self.auto_augment:
                raise FixresError(f"--color-jitter with --auto-augment {self.auto_augment}: timm turns colour jitter "
                                  "off when an auto-augment policy is on (except the 3a policies), so the pair is not "
                                  "a timm recipe; drop --color-jitter (the policy varies colour itself) or use a 3a "
                                  "policy")
        if self.aug_repeats < 1:
            raise FixresError(f"aug_repeats must be at least 1, got {self.aug_repeats}")
        self._check_switchable()
        for part in ("erasing", "mixing", "loss_settings", "ema", "resolution_schedule"):
            getattr(self, part)        # each part checks its own settings

    def _check_switchable(self) -> None:
        res = self.switchable_res
        if res is None:
            return
        if len(res) < 2:
            raise FixresError("--switchable-res needs at least two resolutions (one is plain training)")
        if max(res) != self.train_res:
            raise FixresError(f"--switchable-res {' '.join(map(str, res))}: --train-res must be the largest of them "
                              f"({max(res)}), the resolution each step crops at; got {self.train_res}")
        if self.progressive_from is not None:
            raise FixresError("--switchable-res trains every resolution at every step: it does not combine with "
                              "progressive resizing")

    @property
    def starts_from_weights(self) -> bool:
        """True when the run starts from weights someone trained (their preprocessing then applies)."""
        return bool(self.pretrained or self.weights)

    @property
    def eval_res(self) -> int:
        return self.test_res or self.train_res

    @property
    def peak_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.1 * self.batch_size / 256 if sgd_family(self.optimizer) else 1e-3 * self.batch_size / 512

    @property
    def decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 1e-4 if sgd_family(self.optimizer) else 0.05

    @property
    def mixes(self) -> bool:
        """True when batches are mixed (mixup or CutMix): soft targets."""
        return self.mixing.on

    # The recipe's parts, as the training loop uses them (each checks its settings).
    @property
    def erasing(self) -> Erasing:
        return Erasing(self.random_erasing, self.random_erasing_mode, self.random_erasing_count)

    @property
    def mixing(self) -> Mixing:
        return Mixing(self.mixup, self.cutmix, self.mixup_prob, self.mixup_switch_prob, self.mixup_mode)

    @property
    def loss_settings(self) -> Loss:
        return Loss(self.loss, self.label_smoothing, self.bce_target_thresh)

    @property
    def ema(self) -> Ema:
        return Ema(self.ema_decay, self.ema_warmup)

    @property
    def resolution_schedule(self) -> ResolutionSchedule:
        ramp = None if self.progressive_epochs is None else tuple(self.progressive_epochs)
        return ResolutionSchedule.plan(self.train_res, self.epochs, self.progressive_from, ramp, self.progressive_step)

    def check_pipeline(self, pipeline: str) -> None:
        """Refuse what the resolved data pipeline cannot do. The fast pipeline crops and resizes
        whole batches (on the GPU with the device decoder): mixup/CutMix, random erasing, EMA,
        repeated augmentation and progressive resizing work with it; the per-image PIL policies
        (RandAugment, AutoAugment, AugMix, TrivialAugment) do not."""
        if pipeline == "fast" and self.auto_augment:
            raise FixresError(f"--auto-augment {self.auto_augment} is a per-image PIL transform that the fast "
                              "pipeline does not run; use --pipeline pil (the fast pipeline supports mixup/CutMix, "
                              "random erasing, EMA, repeated augmentation and progressive resizing)")

    def recipe_record(self) -> dict:
        """What a checkpoint records of its training recipe (beyond the crop settings in its
        preprocessing record)."""
        schedule = self.resolution_schedule
        return {"optimizer": self.optimizer, "schedule": self.schedule, "loss": self.loss,
                "label_smoothing": self.label_smoothing, "bce_target_thresh": self.bce_target_thresh,
                "auto_augment": self.auto_augment, "random_erasing": self.erasing.record(),
                "mixup": self.mixing.record(), "aug_repeats": self.aug_repeats, "ema": self.ema.record(),
                "train_res_schedule": schedule.row() if schedule.progressive else None, "weights": "model",
                "switchable_res": list(self.switchable_res) if self.switchable_res else None}


# arguments fixres sets itself, from its own options or the data
OWN_MODEL_ARGS = {"num_classes": "from the data's classes", "pretrained": "use --pretrained",
                  "checkpoint_path": "use --weights", "drop_rate": "use --drop-rate",
                  "drop_path_rate": "use --drop-path-rate", "pretrained_cfg": "from the model name",
                  "pretrained_cfg_overlay": "from the model name"}


def check_batch_split(cfg: TrainConfig, world: int) -> None:
    """The global batch splits evenly over ``world`` processes and the accumulation steps (and
    in an even number per step where batches are mixed)."""
    processes = f" x {world} processes" if world > 1 else ""
    if cfg.batch_size % (cfg.accum_steps * world):
        raise FixresError(f"batch_size {cfg.batch_size} is not divisible by accum_steps {cfg.accum_steps}{processes}")
    if cfg.mixes and (cfg.batch_size // (cfg.accum_steps * world)) % 2:
        raise FixresError(f"mixup/CutMix (timm Mixup) needs an even batch per step and process: batch_size "
                          f"{cfg.batch_size} / (accum_steps {cfg.accum_steps}{processes}) is odd")


def check_batch(cfg: TrainConfig, world: int, train_images: int) -> None:
    """The batch settings against what a run learns only when it starts: its processes and its images."""
    check_batch_split(cfg, world)
    if train_images < cfg.batch_size:
        raise FixresError(f"{train_images} training images are fewer than one batch of {cfg.batch_size}")


def create_kwargs(cfg: TrainConfig) -> dict:
    """The timm.create_model arguments of a run besides the name and classes (recorded in the
    checkpoint as ``model_kwargs``). A fixed-size architecture (ViT, DeiT, Swin...) is built at
    the training resolution, as DeiT and timm train it: its position embedding lives on that
    grid (other sizes resample from it)."""
    own = dict(drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate)
    grid = {"img_size": cfg.train_res} if size_kwargs(cfg.model) else {}
    return {**grid, **parse_model_kwargs(cfg.model_kwargs), **{k: v for k, v in own.items() if v is not None}}


def parse_model_kwargs(items) -> dict:
    """``("patch_size=8", "act_layer=gelu")`` -> ``{"patch_size": 8, "act_layer": "gelu"}`` (values
    read as YAML scalars or lists), refusing a malformed item or an argument fixres sets itself."""
    kwargs = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise FixresError(f"model_kwargs: expected KEY=VALUE, got {item!r}")
        if key in OWN_MODEL_ARGS:
            raise FixresError(f"model_kwargs: {key} is set by fixres ({OWN_MODEL_ARGS[key]})")
        try:
            kwargs[key] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise FixresError(f"model_kwargs: cannot read the value of {key!r}: {value!r}") from None
    return kwargs
