"""The settings of ``fixres grid`` (and the pieces ``fixres transfer`` shares): typed, validated, diffable.

A grid config is one YAML mapping. Top-level keys are the fields of :class:`GridConfig`;
two sections pass settings through to the stages, validated by the stages' own dataclasses:

* ``train:`` any :class:`~fixres.train.config.TrainConfig` setting (epochs, lr, holdout, ...)
  except those the grid sets itself (data, out, model, train_res, device, workers, amp);
* ``adapt:`` any :class:`~fixres.adapt.AdaptOptions` setting (method, epochs, lr, aug, ...)
  except test_res, device, workers and amp.

Two documentation sections are validated and reported but change nothing that runs:
``expected:`` (the paper's top-1 for some cells) and ``expected_cost:`` (GPU hours computed
from a measured throughput, :class:`~fixres.measure.costs.ExpectedCost`).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from ...adapt import AdaptOptions
from ...core.errors import FixresError
from ...core.options import build, check_keys, coerce, option, read_yaml
from ...data import synth
from ...data.transforms import check_resolution, parse_resolutions
from ...measure.costs import ExpectedCost
from ...measure.selection import SELECT_ON
from ...models.factory import check_model_name
from ...train.config import TrainConfig

SECTIONS = ("train", "adapt", "expected", "expected_cost")
SET_BY_GRID = {"train": ("data", "out", "model", "train_res", "device", "workers", "amp"),
               "adapt": ("test_res", "device", "workers", "amp")}
# Keys that may differ when a grid directory is continued; any other difference is refused.
# The defaults are CI-sized (seconds on a CPU): a real grid gives its own sections.
CI_TRAIN = {"epochs": 1, "batch_size": 24}
CI_ADAPT = {"epochs": 1, "batch_size": 16}
RESUMABLE = ("out", "device", "workers", "keep_adapted", "description", "expected", "expected_cost")


@dataclass(frozen=True)
class ExpectedTop1:
    """A published number for one cell of the grid."""

    train_res: int = option(help="training resolution of the cell")
    test_res: int = option(help="test resolution of the cell")
    adapted: bool = option(help="true: after adaptation at test_res; false: without")
    top1: float = option(help="top-1 (%) reported by the source")
    source: str = option(help="where the number comes from (paper table, METHOD.md section)")


def section_field(default=None, help: str = ""):
    """A dataclass field holding a section (a mapping, or a tuple of rows)."""
    return field(default_factory=dict if default is None else default, metadata={"help": help, "cli": {}})


@dataclass(frozen=True)
class GridConfig:
    command: Literal["grid"] = option("grid", "the command this file is for")
    description: str = option("", "what this grid reproduces (free text, reported)")
    out: str = option("fixres-grid", "grid directory (created, or continued when it holds this same grid)")
    data: Optional[str] = option(None, "dataset directory with train/<class>/ and val/<class>/ "
                                       "(default: synthesise the embedded dataset into OUT/data)")
    synth_classes: int = option(4, "embedded dataset (no data given): number of classes")
    synth_train_per_class: int = option(24, "embedded dataset: training images per class")
    synth_val_per_class: int = option(12, "embedded dataset: val images per class")
    synth_seed: int = option(0, "embedded dataset: seed")
    model: str = option("test_resnet", "timm model name (a tag, e.g. resnet50.tv_in1k, selects its preprocessing)")
    train_res: tuple[int, ...] = option((32, 48), "training resolutions: one run each (values or START:END:STEP)",
                                        type=str, metavar="RES")
    test_res: tuple[int, ...] = option((32, 48, 64), "test resolutions swept for every run (values or START:END:STEP)",
                                       type=str, metavar="RES")
    adapt_res: Optional[tuple[int, ...]] = option(None, "test resolutions to adapt at, a subset of test_res "
                                                        "(default: all; an empty list: no adaptation)",
                                                  type=str, metavar="RES")
    select_on: Optional[Literal["holdout", "train", "val", "none"]] = option(
        None, "sweep: images that choose each row's best resolution (default: holdout if the runs hold images out "
              "(train.holdout), else a sample of training images)")
    sweep_batch_size: int = option(100, "sweep: images per batch")
    keep_adapted: bool = option(False, "keep every adapted checkpoint in the grid directory (one model each)")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    workers: Optional[int] = option(None, "data-loading processes (default: cores - 1, at most 16)")
    amp: Literal["auto", "bf16", "fp16", "none"] = option("auto", "mixed precision on a GPU")
    train: dict = section_field(lambda: dict(CI_TRAIN), "TrainConfig settings for every run (a given section replaces "
                                                    "this CI-size default)")
    adapt: dict = section_field(lambda: dict(CI_ADAPT), "AdaptOptions settings for every adaptation (a given section "
                                                    "replaces this CI-size default)")
    expected: tuple = section_field(tuple, "published top-1 of some cells (ExpectedTop1 rows)")
    expected_cost: tuple = section_field(tuple, "expected GPU time (ExpectedCost rows)")

    SET_BY = SET_BY_GRID     # section settings the grid sets itself (not a field: no annotation)

    def __post_init__(self):
        check_common(self)
        check_model_name(self.model)
        for name in ("synth_train_per_class", "synth_val_per_class", "sweep_batch_size"):
            if getattr(self, name) < 1:
                raise FixresError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 2 <= self.synth_classes <= synth.MAX_CLASSES:
            raise FixresError(f"synth_classes must be between 2 and {synth.MAX_CLASSES}, got {self.synth_classes}")
        if self.synth_seed < 0:
            raise FixresError(f"synth_seed must not be negative, got {self.synth_seed}")
        if not self.train_res:
            raise FixresError("train_res is empty: give at least one training resolution")
        for r in self.train_res:
            self.train_config(r)          # validates the train section at every resolution
        if self.data is None:
            check_fits(self.train_res, synth.SHORT_SIDE[1], "the embedded dataset (shorter sides "
                                                             f"{synth.SHORT_SIDE[0]}-{synth.SHORT_SIDE[1]} px)")
        for cell in self.expected:
            if cell.train_res not in self.train_res or cell.test_res not in self.test_res:
                raise FixresError(f"expected: cell {cell.train_res}x{cell.test_res} is not in the grid")
            if cell.adapted and cell.test_res not in self.adapted_at:
                raise FixresError(f"expected: cell {cell.train_res}x{cell.test_res} (adapted) is not adapted")

    @property
    def adapted_at(self) -> tuple[int, ...]:
        return self.test_res if self.adapt_res is None else self.adapt_res

    def train_config(self, train_res: int, *, data: str | None = None) -> TrainConfig:
        """The :class:`TrainConfig` of the run at ``train_res`` (in ``OUT/train-<res>``)."""
        return train_config(self.train, model=self.model, train_res=train_res, out=str(run_dir(self.out, train_res)),
                            data=data or self.data or str(Path(self.out) / "data"), device=self.device,
                            workers=self.workers, amp=self.amp)


def check_common(cfg) -> None:
    """Checks shared by the grid and transfer configs: resolutions, sections, runtime."""
    if not cfg.test_res:
        raise FixresError("test_res is empty: give at least one test resolution")
    for r in cfg.test_res:
        check_resolution(r, "test_res")
    given = cfg.adapt_res      # a tuple (grid), or one resolution, 0 meaning none (transfer)
    adapt_res = given if isinstance(given, tuple) else ((given,) if given else ())
    for k in adapt_res:
        adapt_options(cfg.adapt, k)
        if k not in cfg.test_res:
            raise FixresError(f"adapt_res {k} is not one of test_res ({', '.join(map(str, cfg.test_res))})")
    if cfg.adapt_res is None:
        adapt_options(cfg.adapt, cfg.test_res[0])   # the section is validated even when the choice comes later
    if cfg.workers is not None and cfg.workers < 0:
        raise FixresError(f"workers must not be negative, got {cfg.workers}")
    if cfg.select_on is not None and cfg.select_on not in SELECT_ON:
        raise FixresError(f"select_on must be one of {', '.join(SELECT_ON)}")
    if cfg.select_on == "holdout" and not cfg.train.get("holdout"):
        raise FixresError("select_on holdout needs images held out of training: set train.holdout (e.g. 0.1)")


def check_fits(train_res, largest_short_side: int, where: str) -> None:
    """Refuse training resolutions larger than the shorter side of every image."""
    too_big = [r for r in train_res if r > largest_short_side]
    if too_big:
        raise FixresError(f"train_res {', '.join(map(str, too_big))} is larger than every image of {where}: "
                          f"the largest shorter side is {largest_short_side} px")


def check_data_fits(train_res, data: str | Path) -> None:
    """:func:`check_fits` against the image sizes read from the headers of ``data/train``."""
    from ...analyze import image_sizes
    sizes = image_sizes(data)
    check_fits(train_res, max(min(w, h) for w, h in sizes), f"{Path(data)} ({len(sizes)} training images)")


def run_dir(out: str | Path, train_res: int) -> Path:
    return Path(out) / f"train-{train_res}"


# ----------------------------------------------------------------------------- sections
def train_config(section: dict, **fixed) -> TrainConfig:
    """``section`` (TrainConfig settings) completed by ``fixed`` (what the grid sets), validated.
    A run that starts from pretrained or local weights takes their crop_pct and interpolation
    where the section does not set them (resolved by ``fixres train`` itself)."""
    return build(TrainConfig, section, {k: v for k, v in fixed.items() if v is not None}, where="train")


def adapt_options(section: dict, test_res: int, **runtime) -> AdaptOptions:
    return build(AdaptOptions, section, {"test_res": test_res, **{k: v for k, v in runtime.items() if v is not None}},
                 where="adapt")


def _check_section(name: str, value: Any, cls: type, where: str, set_by: dict) -> dict:
    if not isinstance(value, dict):
        raise FixresError(f"{where}: {name} must be a mapping of settings, got {type(value).__name__}")
    check_keys(cls, value, f"{where}: {name}")
    for key in set_by.get(name, ()):
        if key in value:
            raise FixresError(f"{where}: {name}.{key} is set by the command itself (top-level {key!r} or "
                              "per resolution); remove it from the section")
    return dict(value)


def _rows(name: str, value: Any, cls: type, where: str) -> tuple:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise FixresError(f"{where}: {name} must be a list of mappings")
    return tuple(build(cls, row, where=f"{where}: {name}") for row in value)


def _resolutions(value: Any, name: str) -> list[int]:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, (list, tuple)) and [str(v).lower() for v in value] == ["none"]:
        return []
    if not isinstance(value, (list, tuple)):
        raise FixresError(f"{name}: expected a list of resolutions, got {value!r}")
    if not value:
        return []
    if any(isinstance(v, bool) or not isinstance(v, (int, str)) for v in value):
        raise FixresError(f"{name}: resolutions are integers or START:END:STEP ranges, got {value!r}")
    try:
        return parse_resolutions(value)
    except FixresError as e:
        raise FixresError(f"{name}: {e}") from None


def parse_sets(items: list[str] | None) -> dict[str, dict]:
    """``["train.epochs=5", "adapt.method=bn"]`` -> ``{"train": {"epochs": 5}, "adapt": {"method": "bn"}}``
    (values read as YAML: numbers, booleans, lists)."""
    import yaml
    out: dict[str, dict] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or section not in ("train", "adapt") or not name:
            raise FixresError(f"--set {item!r}: expected train.KEY=VALUE or adapt.KEY=VALUE")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise FixresError(f"--set {item!r}: the value is not valid YAML") from None
        if isinstance(parsed, str):      # YAML 1.1 reads "1e-5" as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out.setdefault(section, {})[name.replace("-", "_")] = parsed
    return out


def load_config(cls: type, path: str | Path | None = None, overrides: dict | None = None, *,
                sets: dict[str, dict] | None = None):
    """Read ``path`` (YAML), apply ``overrides`` (flags; None = not given) and ``sets`` (section
    settings, merged into the file's sections or the defaults) and validate into ``cls``."""
    where = str(path) if path else "settings"
    raw = read_yaml(path) if path else {}
    check_keys(cls, raw, where)
    for name, values in (sets or {}).items():
        base = raw.get(name)
        if base is None:
            field_ = cls.__dataclass_fields__[name]
            base = field_.default_factory() if field_.default_factory is not dataclasses.MISSING else {}
        if not isinstance(base, dict):
            raise FixresError(f"{where}: {name} must be a mapping of settings")
        raw[name] = {**base, **values}
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    check_keys(cls, given, "settings")
    merged = {**raw, **given}
    command = cls.__dataclass_fields__["command"].default
    if merged.get("command", command) != command:
        raise FixresError(f"{where} is a config for `fixres {merged['command']}`, not `fixres {command}`")
    for key in getattr(cls, "RESOLUTION_LISTS", ("train_res", "test_res", "adapt_res")):
        if merged.get(key) is not None:
            merged[key] = _resolutions(merged[key], key)
    sections = {k: merged.pop(k) for k in SECTIONS if k in merged}
    parsed = {}
    for name, value in sections.items():
        if value is None:
            continue
        if name in ("train", "adapt"):
            parsed[name] = _check_section(name, value, TrainConfig if name == "train" else AdaptOptions, where,
                                          getattr(cls, "SET_BY", SET_BY_GRID))
        else:
            parsed[name] = _rows(name, value, ExpectedTop1 if name == "expected" else ExpectedCost, where)
    hints = typing.get_type_hints(cls)
    values = {k: coerce(v, hints[k], f"{where}: {k}" if where != "settings" else k)
              for k, v in merged.items() if v is not None}
    return cls(**values, **parsed)      # __post_init__ validates the whole, sections included


# ----------------------------------------------------------------------------- storing and comparing
def config_dict(cfg) -> dict:
    """A plain, YAML-safe dict of ``cfg`` (tuples as lists, rows as mappings)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, tuple):
            v = [dataclasses.asdict(x) if dataclasses.is_dataclass(x) else x for x in v]
        elif isinstance(v, dict):
            v = {k: list(x) if isinstance(x, tuple) else x for k, x in v.items()}
        out[f.name] = v
    return out


def _flat(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict) and k in ("train", "adapt"):
            flat.update(_flat(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def differing_keys(stored: dict, current: dict, ignore: tuple[str, ...] = RESUMABLE) -> list[str]:
    """Keys (``train.lr`` for sections) whose values differ, as ``key (old -> new)``, sorted."""
    a, b = _flat(stored), _flat(current)
    keys = sorted(k for k in set(a) | set(b) if k.split(".")[0] not in ignore and a.get(k) != b.get(k))
    return [f"{k} ({a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r})" for k in keys]
