"""``fixres transfer``: the paper's transfer protocol, and the paper's architectures.

Protocol (METHOD.md section 4, "Transfer learning"): start from pretrained weights, train
the whole network on the target dataset at ``K_train`` with a new classifier sized to its
classes, sweep the test resolutions, then adapt at ``K_test`` (given, or the one the sweep
chose without looking at val) and report val before and after. With ``finetune: false``
the weights are used as they are (their classifier must already fit the data, e.g.
ImageNet itself): that is the paper's ResNeXt-101 32x48d experiment, adapted at 320.

Weights come from a local file (``weights``: .safetensors or a torch state dict, or a
fixres checkpoint, whose model name is then taken from its metadata) or, online only,
from timm (``pretrained: true``). The normalisation is always the one the weights were
trained with: timm's pretrained config of the *tagged* model name (AdvProp EfficientNets
expect mean = std = 0.5, the others ImageNet's mean/std). A local file with an untagged
name whose tags disagree on the preprocessing is refused rather than guessed.

The directory is resumable like a grid (:class:`fixres.experiments.grid.GridDir`): ``transfer.yaml``,
``cells/``, ``train/`` (the fine-tuning run) or ``pretrained/`` (imported weights),
``adapted/`` (the adapted checkpoint), ``transfer.md`` and ``transfer.json``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

import timm
import torch

from ..core.errors import FixresError
from ..core.options import option
from ..core.progress import Progress
from ..core.rundir import write_json, write_text
from ..data.folder import list_classes
from ..data.preprocessing import Preprocessing
from ..models import create_model
from ..models.checkpoint import (
    WEIGHTS,
    CheckpointMeta,
    find_checkpoint,
    read_meta,
    save_checkpoint,
)
from ..models.factory import (
    check_model_name,
    classifier_keys,
    model_with_weights,
    read_state_dict,
)
from ..models.paper import RESNEXT_WSL, register_paper_models
from ..train.loop import train_preprocessing
from .grid.config import (
    SECTIONS,
    adapt_options,
    check_common,
    check_data_fits,
    config_dict,
    section_field,
    train_config,
)
from .grid.run import (
    GridDir,
    ensure_adapted,
    ensure_swept,
    ensure_trained,
    swept_result,
)


def check_tagged(model: str) -> None:
    """Refuse an untagged name whose pretrained tags disagree on the preprocessing, for local weights."""
    if "." in model or not timm.is_model(model):
        return
    seen = {}
    for tag in timm.list_pretrained(f"{model}.*"):
        cfg = timm.models.get_pretrained_cfg(tag)
        seen.setdefault((tuple(cfg.mean), tuple(cfg.std)), []).append(tag)
    if len(seen) > 1:
        kinds = "; ".join(f"{', '.join(tags)}: mean {m}, std {s}" for (m, s), tags in seen.items())
        raise FixresError(f"model {model!r} has pretrained tags with different normalisations ({kinds}): name the "
                          f"tag of your weights file (e.g. {next(iter(seen.values()))[0]})")


def declared_by(model, name: str) -> Preprocessing:
    """What ``model``'s timm pretrained config declares (fixres's one resolver), sizes not read."""
    return Preprocessing.from_pretrained_cfg(getattr(model, "pretrained_cfg", None), name, sizes=False)


def declared_crop(name: str) -> dict:
    """The crop_pct and interpolation the weights of ``name`` declare (recorded beside the transfer)."""
    with torch.device("meta"):
        prep = declared_by(timm.create_model(name, pretrained=False), name)
    return {"crop_pct": prep.crop_pct, "interpolation": prep.interpolation}


def weights_fit(model: str, num_classes: int, path: Path) -> list[str]:
    """Check that a weights file fits ``model`` (timm's own loader, key conversions included, on the
    meta device: no memory, no arithmetic); return the classifier keys that will be re-initialised
    (another class count)."""
    with torch.device("meta"):
        return model_with_weights(model, read_state_dict(path), str(path), num_classes=num_classes)[1]


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class TransferConfig:
    command: Literal["transfer"] = option("transfer", "the command this file is for")
    description: str = option("", "what this run reproduces (free text, reported)")
    out: str = option("fixres-transfer", "transfer directory (created, or continued when it holds this same run)")
    data: Optional[str] = option(None, "target dataset with train/<class>/ and val/<class>/")
    model: Optional[str] = option(None, "timm model name WITH its pretrained tag (e.g. tf_efficientnet_b0.ap_in1k); "
                                        "default: the model of a fixres checkpoint given as weights")
    pretrained: bool = option(False, "start from timm's pretrained weights (downloads them: needs internet)")
    weights: Optional[str] = option(None, "start from a local weights file or fixres checkpoint")
    finetune: bool = option(True, "train the whole network on the target data at train_res (false: use the "
                                  "weights as they are; their classifier must fit the data's classes)")
    train_res: int = option(224, "K_train: the fine-tuning resolution (without finetune: the weights' own)")
    test_res: tuple[int, ...] = option((224, 288, 320, 384), "test resolutions swept after training (values or "
                                                             "START:END:STEP); train_res is always included",
                                       type=str, metavar="RES")
    adapt_res: Optional[int] = option(None, "K_test: adapt at this resolution (default: the one the sweep chose "
                                            "without val; 0: no adaptation)")
    select_on: Optional[Literal["holdout", "train", "val", "none"]] = option(
        None, "images on which the sweep chooses K_test (default: holdout if train.holdout, else a training sample)")
    sweep_batch_size: int = option(100, "sweep: images per batch")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    workers: Optional[int] = option(None, "data-loading processes (default: cores - 1, at most 16)")
    amp: Literal["auto", "bf16", "fp16", "none"] = option("auto", "mixed precision on a GPU")
    train: dict = section_field(help="TrainConfig settings of the fine-tuning (epochs, lr, holdout, ...)")
    adapt: dict = section_field(help="AdaptOptions settings of the adaptation (method, epochs, lr, ...)")
    expected: tuple = section_field(tuple, "published top-1 (ExpectedTop1 rows; train_res must be K_train)")
    expected_cost: tuple = section_field(tuple, "expected GPU time (ExpectedCost rows)")

    RESOLUTION_LISTS = ("test_res",)      # settings that accept START:END:STEP ranges
    SET_BY = {"train": ("data", "out", "model", "train_res", "device", "workers", "amp", "pretrained", "weights"),
              "adapt": ("test_res", "device", "workers", "amp")}

    def __post_init__(self):
        check_common(self)
        if not self.pretrained and not self.weights:
            raise FixresError("the transfer protocol starts from pretrained weights: give weights: FILE "
                              "(or pretrained: true, online)")
        if self.pretrained and self.weights:
            raise FixresError("give either pretrained or weights, not both")
        if self.model is None and not self.weights:
            raise FixresError("model is required with pretrained: true")
        if self.model is not None:
            check_model_name(self.model)
        if self.adapt_res is None and self.select_on == "none":
            raise FixresError("select_on none chooses no resolution: give adapt_res")
        if not self.finetune and set(self.train) - {"crop_pct", "interpolation"}:
            raise FixresError(f"without finetune there is no training: remove train settings "
                              f"{', '.join(sorted(set(self.train) - {'crop_pct', 'interpolation'}))}")
        for cell in self.expected:
            if cell.train_res != self.train_res or cell.test_res not in self.sweep_res:
                raise FixresError(f"expected: cell {cell.train_res}x{cell.test_res} is not in this run")

    @property
    def sweep_res(self) -> tuple[int, ...]:
        return tuple(sorted({*self.test_res, self.train_res}))


def load_experiment(path: str | Path, overrides: dict | None = None, sets: dict | None = None):
    """A config file of ``configs/`` as a :class:`GridConfig` or :class:`TransferConfig` (by its ``command``)."""
    from ..core.options import read_yaml
    from .grid.config import GridConfig, load_config
    command = read_yaml(path).get("command", "grid")
    classes = {"grid": GridConfig, "transfer": TransferConfig}
    if command not in classes:
        raise FixresError(f"{path}: command must be grid or transfer, got {command!r}")
    return load_config(classes[command], path, overrides, sets=sets)


@dataclass(frozen=True)
class Source:
    model: str                           # timm name (with its tag)
    weights: Path | None                 # local weights file (None: timm's pretrained weights)
    classes: tuple[str, ...] | None      # the classes of a fixres checkpoint (a plain file names none)


def resolve_source(cfg: TransferConfig) -> Source:
    """Where the weights come from; a fixres checkpoint lends its model name and class names."""
    if cfg.weights is None:
        return Source(cfg.model, None, None)
    path = Path(cfg.weights)
    if path.is_dir() or (path.suffix == ".safetensors" and (path.parent / "meta.json").is_file()):
        directory = find_checkpoint(path)
        meta = read_meta(directory)
        if cfg.model is not None and cfg.model != meta.model:
            raise FixresError(f"weights {path} are a fixres checkpoint of {meta.model}, not {cfg.model}")
        return Source(meta.model, directory / WEIGHTS, tuple(meta.class_names))
    if not path.is_file():
        raise FixresError(f"weights file {path} does not exist")
    if cfg.model is None:
        raise FixresError(f"{path} is not a fixres checkpoint: name its model (with its pretrained tag)")
    check_tagged(cfg.model)
    return Source(cfg.model, path, None)


# ----------------------------------------------------------------------------- stages
def ensure_imported(gdir: GridDir, cfg: TransferConfig, model_name: str, weights: Path | None, classes: tuple,
                    src_classes: tuple | None, log: Callable[[str], None]) -> dict:
    """The weights as they are, saved as a fixres checkpoint in ``OUT/pretrained`` (no training)."""
    cell = gdir.cell("import")
    if cell is not None:
        return cell
    if weights is not None and weights_fit(model_name, len(classes), weights):
        raise FixresError(f"{weights}: its classifier does not have the data's {len(classes)} classes; "
                          "without finetune it must")
    model = create_model(model_name, len(classes), pretrained=cfg.pretrained, weights=weights)
    if cfg.pretrained and model.pretrained_cfg.get("num_classes") != len(classes):
        raise FixresError(f"{model_name}'s pretrained classifier has {model.pretrained_cfg.get('num_classes')} "
                          f"classes, the data {len(classes)}: without finetune they must match")
    if src_classes is not None and tuple(src_classes) != classes:
        raise FixresError(f"the checkpoint's classes differ from the data's ({len(src_classes)} vs {len(classes)}, or "
                          "other names): without finetune they must be the same")
    tcfg = train_config(cfg.train, model=model_name, train_res=cfg.train_res, out="-", data=cfg.data,
                        pretrained=cfg.pretrained, weights=str(weights) if weights else None)
    meta = CheckpointMeta(model=model_name, class_names=classes,
                          preprocessing=train_preprocessing(tcfg, declared_by(model, model_name)), metrics={})
    save_checkpoint(gdir.root / "pretrained", model, meta)
    log(f"imported {model_name} ({'timm pretrained' if cfg.pretrained else weights}) as {gdir.root / 'pretrained'}")
    return gdir.save("import", {"checkpoint": str(gdir.root / "pretrained"), "model": model_name,
                                "source": "timm pretrained" if cfg.pretrained else str(weights)})


@dataclass
class TransferResult:
    config: dict
    source: dict       # model, weights, re-initialised classifier keys
    cells: dict        # train|import, sweep, adapt (as stored)
    adapt_res: int | None
    seconds: float

    def summary(self) -> dict:
        sweep, adapt = self.cells["sweep"], self.cells.get("adapt")
        at_train = next(r for r in sweep["rows"] if r["test_res"] == self.config["train_res"])
        return {"model": self.source["model"], "train_res": self.config["train_res"],
                "val_top1_at_train_res": at_train["top1"], "chosen": sweep.get("chosen"),
                "adapt_res": self.adapt_res, "method": adapt["method"] if adapt else None,
                "before": adapt["before"]["top1"] if adapt else None,
                "after": adapt["after"]["top1"] if adapt else None}

    def markdown(self) -> str:
        from .grid.report import markdown_table
        s, cfg, src = self.summary(), self.config, self.source
        train = self.cells.get("train")
        lines = [f"# Transfer: {s['model']} -> `{cfg['data']}`", ""]
        if cfg.get("description"):
            lines += [cfg["description"].strip(), ""]
        start = "timm pretrained weights" if cfg["pretrained"] else f"`{src['source_weights']}`"
        if train:
            reinit = ", ".join(src["reinitialised"]) or "none"
            reinit += f" ({src['classifier_note']})"
            lines += [f"Start: {start}; classifier re-initialised: {reinit}. Fine-tuned the whole network at "
                      f"{cfg['train_res']} px for {train['epochs']} epochs ({train['train_seconds']:.0f} s, "
                      f"{train['train_images_per_s']:.0f} img/s, peak memory {train['peak_memory_mb']:.0f} MiB).", ""]
        else:
            lines += [f"Start: {start}, used as it is (no fine-tuning; trained at {cfg['train_res']} px).", ""]
        lines += [f"Val top-1 at K_train = {cfg['train_res']} px: **{s['val_top1_at_train_res']:.2f}**", "",
                  "## Sweep before adaptation", ""]
        columns = [("test_res", "test res", "d"), ("resize_size", "resize", "d"), ("top1", "top-1", ".2f"),
                   ("top5", "top-5", ".2f"), ("loss", "loss", ".4f"), ("n", "images", "d")]
        lines += [markdown_table(self.cells["sweep"]["rows"], columns), ""]
        chosen = s["chosen"]
        if chosen:
            lines += [f"Chosen without val: {chosen['test_res']} px ({self.cells['sweep']['selection']['note']}).", ""]
        if s["method"]:
            lines += [f"## Adaptation at K_test = {s['adapt_res']} px ({s['method']})", "",
                      f"Val top-1 {s['before']:.2f} -> **{s['after']:.2f}** ({s['after'] - s['before']:+.2f}); "
                      f"{s['after'] - s['val_top1_at_train_res']:+.2f} against testing at K_train.", ""]
        return "\n".join(lines)

    def write(self, out: Path) -> None:
        write_text(out / "transfer.md", self.markdown())
        write_json(out / "transfer.json", {"summary": self.summary(), "config": self.config, "source": self.source,
                                           "cells": self.cells, "seconds_this_invocation": self.seconds})


def run_transfer(cfg: TransferConfig, *, quiet: bool = False, log: Callable[[str], None] | None = None
                 ) -> TransferResult:
    """Run (or continue) the transfer protocol of ``cfg`` in ``cfg.out``."""
    log = log or ((lambda text: None) if quiet else (lambda text: Progress.write(f"[transfer] {text}")))
    if cfg.data is None:
        raise FixresError("data is required: the target dataset directory")
    t0 = time.perf_counter()
    src = resolve_source(cfg)
    model_name, weights = src.model, src.weights
    classes = list_classes(Path(cfg.data) / "train")
    check_data_fits([cfg.train_res], cfg.data)
    reinit = weights_fit(model_name, len(classes), weights) if weights is not None else []
    gdir = GridDir(cfg.out, config_dict(cfg), marker="transfer.yaml").open()
    note = "another number of classes" if reinit else "same number of classes: kept"
    new_classifier = bool(cfg.finetune and weights is not None and not reinit and src.classes not in (None, classes))
    if new_classifier:
        with torch.device("meta"):
            reinit = sorted(classifier_keys(timm.create_model(model_name, pretrained=False, num_classes=len(classes))))
        note = "same number of classes but other names: re-initialised"
    elif not reinit and src.classes is None and cfg.finetune:
        note += " (a plain weights file does not name its classes)"
    source = {"model": model_name, "weights": str(weights) if weights else None, "pretrained": cfg.pretrained,
              "source_weights": cfg.weights, "reinitialised": reinit, "classifier_note": note,
              "classes": len(classes), "preprocessing": declared_crop(model_name)}
    cells: dict = {}
    data = Path(cfg.data)
    if cfg.finetune:
        tcfg = train_config(cfg.train, model=model_name, train_res=cfg.train_res, out=str(gdir.root / "train"),
                            data=cfg.data, device=cfg.device, workers=cfg.workers, amp=cfg.amp,
                            pretrained=cfg.pretrained or None, weights=str(weights) if weights else None,
                            new_classifier=new_classifier or None)
        cells["train"] = ensure_trained(gdir, "train", tcfg, cfg.sweep_res, log=log, quiet=quiet)
        checkpoint = gdir.root / "train"   # its best epoch, as every command opens a run
    else:
        cells["import"] = ensure_imported(gdir, cfg, model_name, weights, classes, src.classes, log)
        checkpoint = gdir.root / "pretrained"
    cells["sweep"] = ensure_swept(gdir, "sweep", checkpoint, data, cfg.sweep_res, cfg, quiet=quiet, log=log)
    k = cfg.adapt_res if cfg.adapt_res is not None else (cells["sweep"].get("chosen") or {}).get("test_res")
    if k:   # adapt_res 0: no adaptation
        opts = adapt_options(cfg.adapt, k, device=cfg.device, workers=cfg.workers, amp=cfg.amp)
        cells["adapt"] = ensure_adapted(gdir, "adapt", checkpoint, data, opts, out=gdir.root / "adapted", log=log,
                                        before=swept_result(cells["sweep"], k))
    result = TransferResult(config_dict(cfg), source, cells, k or None, round(time.perf_counter() - t0, 2))
    result.write(gdir.root)
    return result


__all__ = ["RESNEXT_WSL", "SECTIONS", "Source", "TransferConfig", "TransferResult", "check_tagged",
           "load_experiment", "register_paper_models", "resolve_source", "run_transfer", "weights_fit"]
