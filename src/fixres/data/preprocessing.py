"""The preprocessing of a model, as one record resolved once per command.

What timm splits between ``PretrainedCfg`` (what travels with the weights) and its data-config
resolver (what a command resolves from them and its flags), fixres holds in one frozen
:class:`Preprocessing`: the normalisation, the test geometry (resolution,
centre-crop fraction, interpolation) and the training crop settings (resolution,
RandomResizedCrop scale and ratio, flip, colour jitter). A checkpoint stores it whole
(``meta.json["preprocessing"]``); a command resolves it ONCE from the checkpoint (or the
model) and the user's flags (:meth:`Preprocessing.override`), then passes it down. The
transforms every stage runs are made from it: :meth:`test_view` (``fixres eval``, sweep,
adaptation), :meth:`train_view` (training, the ``parametric`` method's train-time law,
``fixres stats``' reference) and :meth:`normalizer`.

:meth:`Preprocessing.from_pretrained_cfg` is THE reader of what a model's timm pretrained config
declares (the only caller of timm's ``resolve_data_config`` in fixres): every command that takes a
model someone else trained, ``fixres train --pretrained / --weights``, grid, transfer, analyze
and stats go through it, with timm's defaults where the config declares nothing.

``origin`` says where each value came from (``"checkpoint"``, ``"flag"``, ``"defaults"``,
a run's ``config.yaml``...); it is reported, never compared.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..core.errors import FixresError
from .transforms import (
    CROP_MODES,
    DEFAULT_CROP_PCT,
    DEFAULT_RATIO,
    DEFAULT_SCALE,
    INTERPOLATIONS,
    EvalTransform,
    Normalizer,
    TrainTransform,
    check_crop_mode,
    check_crop_pct,
    check_resolution,
    interpolation_mode,
)

TRAIN_CROP_FIELDS = ("scale", "ratio", "hflip", "color_jitter")


@dataclass(frozen=True)
class Preprocessing:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_pct: float = DEFAULT_CROP_PCT
    crop_mode: str = "center"          # timm's: center, squash or border (see transforms.eval_plan)
    train_res: int = 224
    test_res: int = 224
    scale: tuple[float, float] = DEFAULT_SCALE
    ratio: tuple[float, float] = DEFAULT_RATIO
    hflip: float = 0.5
    color_jitter: float = 0.0
    origin: Mapping[str, str] = field(default_factory=dict, compare=False)   # field -> where its value came from

    def __post_init__(self):
        if len(self.mean) != len(self.std) or not self.mean:
            raise FixresError(f"mean and std must have the same number of channels, got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise FixresError(f"std must be positive, got {self.std}")
        check_resolution(self.train_res, "train_res")
        check_resolution(self.test_res, "test_res")
        check_crop_pct(self.crop_pct)
        check_crop_mode(self.crop_mode)
        interpolation_mode(self.interpolation)
        self.train_view()      # validates scale, ratio, flip and jitter

    # ------------------------------------------------------------------ the transforms it makes
    def test_view(self, test_res: int | None = None, crop_pct: float | None = None) -> EvalTransform:
        """The test preprocessing at ``test_res``/``crop_pct`` (default: this record's)."""
        return EvalTransform(self.test_res if test_res is None else test_res,
                             self.crop_pct if crop_pct is None else crop_pct, self.interpolation, self.crop_mode,
                             self.fill)

    @property
    def fill(self) -> tuple[int, ...]:
        """The padding colour of the ``border`` crop mode: the mean colour, as timm pads."""
        return tuple(round(255 * m) for m in self.mean)

    def train_view(self, size: int | None = None) -> TrainTransform:
        """RandomResizedCrop + flip + jitter at ``size`` (default: the training resolution)."""
        return TrainTransform(self.train_res if size is None else size, self.scale, self.ratio, self.hflip,
                              self.color_jitter, self.interpolation)

    def normalizer(self, channels_last: bool = False) -> Normalizer:
        return Normalizer(self.mean, self.std, channels_last)

    # ------------------------------------------------------------------ resolution
    def override(self, source: str, **values: Any) -> "Preprocessing":
        """A copy with the given values (``None`` = not given, as timm's ``resolve_data_config``
        treats its arguments), each recorded as coming from ``source``."""
        given = {k: _canonical(k, v) for k, v in values.items() if v is not None}
        unknown = set(given) - {f.name for f in dataclasses.fields(self)} - {"origin"}
        if unknown:
            raise TypeError(f"unknown preprocessing settings: {', '.join(sorted(unknown))}")
        if not given:
            return self
        return dataclasses.replace(self, **given, origin={**self.origin, **{k: source for k in given}})

    def source_of(self, name: str) -> str:
        return self.origin.get(name, "defaults")

    # ------------------------------------------------------------------ what a model declares
    @classmethod
    def from_pretrained_cfg(cls, pretrained_cfg: Mapping[str, Any] | None, where: str, *,
                            sizes: bool = True) -> "Preprocessing":
        """The preprocessing a timm pretrained config declares, resolved by timm's own data-config
        resolver, with timm's defaults where it declares nothing (ImageNet mean/std, bicubic,
        crop 0.875, 224 px): normalisation, interpolation and crop mode; the training resolution
        (``input_size``) and the TEST geometry (``test_input_size`` / ``test_crop_pct`` where
        declared, as timm's validate.py evaluates). Weights do not record their training crops:
        the RandomResizedCrop defaults, said so in ``origin``.

        ``sizes=False``: for a caller that sets its own resolutions (training): the crop
        fraction declared at ``input_size`` (the weights' own evaluation), the sizes not read.
        """
        from timm.data import resolve_data_config
        cfg = dict(pretrained_cfg or {}) or {"architecture": where}     # timm refuses an empty config
        train = resolve_data_config(pretrained_cfg=cfg)
        test = resolve_data_config(pretrained_cfg=cfg, use_test_size=True) if sizes else train
        values = dict(mean=train["mean"], std=train["std"], interpolation=test.get("interpolation") or "bicubic",
                      crop_pct=float(test["crop_pct"]), crop_mode=test.get("crop_mode") or "center")
        if sizes:
            shapes = [tuple(train["input_size"][1:]), tuple(test["input_size"][1:])]
            if any(h != w for h, w in shapes):
                raise FixresError(f"{where} declares a non-square input size {shapes[0]}: fixres evaluates square "
                                  "crops; give --test-res and --train-res")
            values.update(train_res=int(shapes[0][0]), test_res=int(shapes[1][0]))
        if values["interpolation"] not in INTERPOLATIONS:
            raise FixresError(f"{where} declares interpolation {values['interpolation']!r}; give --interpolation "
                              "bilinear or bicubic")
        if values["crop_mode"] not in CROP_MODES:
            raise FixresError(f"{where} declares crop_mode {values['crop_mode']!r}; give --crop-mode")
        prep = cls.from_dict(values, origin=f"timm pretrained_cfg of {where}")
        return prep.override("defaults (not recorded by the weights)", scale=prep.scale, ratio=prep.ratio,
                             hflip=prep.hflip, color_jitter=prep.color_jitter)

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
        out["origin"] = dict(self.origin)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str | None = None) -> "Preprocessing":
        """Read a stored record; ``origin`` (if given) replaces the stored origins of every value."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: _canonical(k, v) for k, v in data.items() if k in names and k != "origin"}
        stored = dict(data.get("origin") or {})
        try:
            return cls(**values, origin={k: origin for k in values} if origin else stored)
        except TypeError as e:
            raise FixresError(f"incomplete preprocessing record ({e})") from None


def _canonical(name: str, value: Any) -> Any:
    if name in ("mean", "std", "scale", "ratio"):
        return tuple(float(v) for v in value)
    if name in ("crop_pct", "hflip", "color_jitter"):
        return float(value)
    return value
