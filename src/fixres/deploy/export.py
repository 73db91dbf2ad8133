"""Exporting a checkpoint as a folder that timm loads as it is, optionally with ONNX.

The folder::

    config.json         timm's model config: architecture, num_classes, label_names,
                        model_args and a pretrained_cfg with the TEST preprocessing;
                        fixres's own record (train resolution, adaptation, source
                        checkpoint, parity checks) under the top-level key "fixres",
                        which timm ignores
    model.safetensors   the weights, a byte copy of the checkpoint's (or of its EMA weights)
    model.onnx          (optional) the model at the test resolution, dynamic batch axis

so that ``timm.create_model("local-dir:DIR", pretrained=True)`` builds the model with
these weights (``pretrained=True`` is what makes timm read them; without it timm builds
the architecture with random weights) and timm's data config of ``m`` (``timm.data``'s resolver)
gives the preprocessing fixres tested it with.

Which size goes where: timm's convention is ``input_size`` = the training size and
``test_input_size`` = a better size for testing, but timm's plain data-config resolution of ``m``
(what most timm code calls) reads ``input_size`` and ignores ``test_input_size``. An
exported model is meant to be *used*, at the resolution it was adapted to, so both are the
test resolution here, as are ``crop_pct`` and ``test_crop_pct``; the training resolution
is kept in ``config.json["fixres"]["train_res"]`` (and ``train_input_size``), where no
timm code picks it up by accident.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..core.errors import FixresError
from ..core.rundir import atomic_path, prepare_run_dir, sha256_file, write_json
from ..data.preprocessing import Preprocessing
from ..models.checkpoint import EMA_WEIGHTS, WEIGHTS, CheckpointMeta, read_meta, state_dict_for_saving, versions
from ..models.ladder import LADDER_FILE, Ladder, is_ladder
from ..models.onnx import example_inputs, export_onnx, require_onnx
from ..models.sizes import check_input_size, rebuild_kwargs
from ..models.sources import ModelSource, as_source, open_model
from ..version import __version__

EXPORT_FORMAT = "fixres-export/1"
EXPORT_LADDER_FORMAT = "fixres-export-ladder/1"
CONFIG, ONNX_FILE = "config.json", "model.onnx"
# timm and fixres build the same module with the same weights on the CPU: the logits agree
# exactly in practice; the bound only allows for kernels that are not bitwise deterministic.
TIMM_TOLERANCE = 1e-5
# Adaptation methods whose forward pass a timm model of the same architecture cannot run.
NOT_EXPORTABLE = {"parametric": "it remaps the pooled features with a fitted distribution transform, "
                                "which a plain timm model of the same architecture cannot represent"}


def export_checkpoint(checkpoint: "str | Path | ModelSource", out: str | Path, *, onnx: bool = False,
                      test_res: int | None = None, crop_pct: float | None = None) -> Path:
    """Write a timm-loadable folder (and optionally ``model.onnx``) for a checkpoint.

    Args:
        checkpoint: run directory, checkpoint directory or ``model.safetensors`` file, or any
            :class:`~fixres.models.sources.ModelSource` (a model someone else trained, with the test
            preprocessing and label names it declares). ``ModelSource(checkpoint=..., ema=True)``
            exports a run's EMA weights (recorded as ``source["weights"] == "ema"``).
        out: the folder to create; refused if it exists and is not empty. Written into a
            temporary sibling first and renamed into place, so it is whole or absent.
        onnx: also write ``model.onnx`` at the test resolution and check it against PyTorch
            with ONNX Runtime (needs the ``onnx`` and ``onnxruntime`` packages).
        test_res: test resolution to record (default: the checkpoint's).
        crop_pct: centre-crop fraction to record (default: the checkpoint's).

    Returns:
        The folder written. Its ``config.json["fixres"]`` holds the check results.

    Raises:
        FixresError: existing output, a method timm cannot represent, missing ONNX
            packages, or an export whose outputs differ from the PyTorch model's.
    """
    if onnx:
        require_onnx()
    source = as_source(checkpoint)
    if source.checkpoint is not None and is_ladder(source.checkpoint):
        if test_res is not None or crop_pct is not None:
            raise FixresError("a ladder exports every rung at its own resolution: drop --test-res / --crop-pct (or "
                              "export one rung, LADDER/rungs/<res>)")
        return export_ladder(Ladder.open(source.checkpoint), out, onnx=onnx)
    if source.checkpoint is not None:
        refuse_unexportable(read_meta(source.checkpoint))       # refuse before loading any weights
    out = prepare_run_dir(out, replaceable=False, keep=False)   # must not exist or be empty; checked before the work
    opened = open_model(source)
    meta = opened.meta
    prep = meta.preprocessing.override("flag", test_res=test_res, crop_pct=crop_pct)
    origin = {"checkpoint": opened.name, "weights_sha256": meta.weights_sha256, "epoch": meta.epoch,
              "created": meta.created, "versions": meta.versions, "weights_from": meta.weights_from,
              "weights": "ema" if source.ema else "model"}
    byte_copy = opened.directory is not None and not meta.base      # a ladder rung holds only its changed tensors
    weights = opened.directory / (EMA_WEIGHTS if source.ema else WEIGHTS) if byte_copy else None
    out.parent.mkdir(parents=True, exist_ok=True)
    # an empty `out` (checked above) is replaced; one that filled up since makes this fail, deleting nothing
    with atomic_path(out, existing="empty", fsync=True) as tmp:
        tmp.mkdir()
        write_export(tmp, opened.model, meta, prep, origin, weights_file=weights, onnx=onnx)
    return out


def export_ladder(ladder: Ladder, out: str | Path, *, onnx: bool = False) -> Path:
    """One timm-loadable folder per rung, ``OUT/<res>/`` (each loads with
    ``timm.create_model('local-dir:OUT/<res>', pretrained=True)``; with ``onnx`` its own
    ``model.onnx``, checked), and ``OUT/ladder.json``: the rungs, their accuracy and cost, the
    budget rule. Written as one unit."""
    for rung in ladder.rungs:
        refuse_unexportable(read_meta(ladder.root / rung["dir"]))
    out = prepare_run_dir(out, replaceable=False, keep=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    rungs = []
    with atomic_path(out, existing="empty", fsync=True) as tmp:
        tmp.mkdir()
        for rung in ladder.rungs:
            opened = open_model(ladder.root / rung["dir"])
            meta, name = opened.meta, str(rung["test_res"])
            origin = {"checkpoint": str(ladder.root / rung["dir"]), "ladder": str(ladder.root),
                      "weights_sha256": meta.weights_sha256, "created": meta.created, "versions": meta.versions,
                      "weights_from": meta.weights_from, "weights": (meta.recipe or {}).get("weights", "model")}
            (tmp / name).mkdir()
            config = write_export(tmp / name, opened.model, meta, meta.preprocessing, origin, onnx=onnx)
            rungs.append({**{k: rung.get(k) for k in ("test_res", "crop_pct", "resize", "method", "before", "after",
                                                        "selection_split", "selection_top1", "gflops", "latency_ms",
                                                        "images_per_s", "timing_stable")},
                          "dir": name, "weights_sha256": config["fixres"]["weights_sha256"],
                          "onnx": config["fixres"].get("onnx", {}).get("file")})
        write_json(tmp / LADDER_FILE, {"format": EXPORT_LADDER_FORMAT, "model": ladder.record["model"],
                                       "ladder": str(ladder.root), "rungs": rungs,
                                       "budget_rule": ladder.record["budget_rule"], "timing": ladder.record["timing"],
                                       "load": "timm.create_model('local-dir:<this folder>/<test_res>', "
                                               "pretrained=True)"})
    return out


def write_export(folder: Path, model: nn.Module, meta: CheckpointMeta, prep: Preprocessing, origin: dict, *,
                 weights_file: Path | None = None, onnx: bool = False) -> dict:
    """Fill the (new, empty) ``folder`` with the export of ``model`` at ``prep``'s test geometry:
    the weights (a byte copy of ``weights_file`` when given), ``config.json`` (``origin``: where
    the weights came from) and the timm (and ONNX) parity checks. Returns the config written."""
    check_input_size(model, [prep.test_res])
    example = example_inputs(3, len(prep.mean), prep.test_res)
    with torch.no_grad():
        reference = model(example)      # check_input_size above ran it at test_res
    config = timm_config(meta, model, prep)
    record = config["fixres"]
    record["resize"] = prep.test_view().resize_size
    record["source"] = origin
    if weights_file is not None:
        shutil.copyfile(weights_file, folder / WEIGHTS)
    else:
        save_file(state_dict_for_saving(model), str(folder / WEIGHTS), metadata={"format": "pt"})
    record["weights_sha256"] = sha256_file(folder / WEIGHTS)
    write_json(folder / CONFIG, config)
    record["timm_max_abs_diff"] = check_timm_load(folder, example, reference)
    if onnx:
        record["onnx"] = export_onnx(model, folder / ONNX_FILE, prep.test_res, len(prep.mean))
    record["exported"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(folder / CONFIG, config)
    return config


def refuse_unexportable(meta: CheckpointMeta) -> None:
    adaptation = meta.adaptation or {}
    method = adaptation.get("method")
    if method not in NOT_EXPORTABLE and adaptation.get("equaliser"):
        method = "parametric"   # adapted again on top of a parametric equaliser, which it keeps
    if method in NOT_EXPORTABLE:
        raise FixresError(f"cannot export a checkpoint adapted with the {method!r} method: {NOT_EXPORTABLE[method]} "
                          f"(export the checkpoint it was adapted from, or adapt with another method)")


def timm_config(meta: CheckpointMeta, model: nn.Module, prep: Preprocessing) -> dict:
    """The ``config.json`` that timm's ``local-dir:`` loader reads (see the module docstring);
    ``prep``: the preprocessing to record (the checkpoint's, with any override of the test geometry)."""
    from timm.models import split_model_name_tag

    declared = getattr(model, "pretrained_cfg", {}) or {}
    architecture = declared.get("architecture") or split_model_name_tag(meta.model)[0]
    test_res, crop_pct = prep.test_res, prep.crop_pct
    chans = len(prep.mean)
    size = [chans, test_res, test_res]
    pretrained_cfg = {
        "input_size": size,               # = test size: what timm's plain data config of the model uses
        "test_input_size": size,
        "fixed_input_size": bool(declared.get("fixed_input_size", False)),
        "interpolation": prep.interpolation,
        "crop_pct": crop_pct,
        "test_crop_pct": crop_pct,
        "mean": list(prep.mean),
        "std": list(prep.std),
        "num_classes": meta.num_classes,
        "label_names": list(meta.class_names),
        "crop_mode": prep.crop_mode,
        "custom_load": False,
    }
    for key in ("first_conv", "classifier"):    # used by timm to adapt in_chans / num_classes
        if declared.get(key):
            pretrained_cfg[key] = declared[key]
    config = {
        "architecture": architecture,
        "num_classes": meta.num_classes,
        "num_features": int(getattr(model, "num_features", 0)) or None,
        "label_names": list(meta.class_names),
        "pretrained_cfg": pretrained_cfg,
    }
    if meta.label_descriptions:         # timm's convention: label name -> description
        config["label_descriptions"] = dict(zip(meta.class_names, meta.label_descriptions))
    model_args = {**rebuild_kwargs(model, architecture), **meta.model_kwargs}    # timm rebuilds the same model
    if model_args:
        config["model_args"] = model_args
    config["fixres"] = fixres_record(meta, prep)
    return config


def fixres_record(meta: CheckpointMeta, prep: Preprocessing) -> dict:
    """What fixres records of an export under ``config.json["fixres"]`` (timm ignores the key)."""
    chans = len(prep.mean)
    return {
        "format": EXPORT_FORMAT,
        "fixres_version": __version__,
        "model": meta.model,
        "train_res": prep.train_res,
        "train_input_size": [chans, prep.train_res, prep.train_res],
        "test_res": prep.test_res,
        "crop_pct": prep.crop_pct,
        "interpolation": prep.interpolation,
        "checkpoint_test_res": meta.preprocessing.test_res,
        "checkpoint_crop_pct": meta.preprocessing.crop_pct,
        "preprocessing": prep.to_dict(),
        "class_names": list(meta.class_names),
        "adaptation": meta.adaptation,
        "metrics": meta.metrics,
        "holdout": meta.holdout,
        "data_digest": meta.data_digest,
        "versions": versions(),
    }


def load_timm_export(directory: str | Path) -> nn.Module:
    """``timm.create_model("local-dir:DIR", pretrained=True)`` in eval mode, errors as FixresError."""
    import timm
    try:
        model = timm.create_model(f"local-dir:{Path(directory)}", pretrained=True)
    except (RuntimeError, ValueError, KeyError, TypeError, OSError, AssertionError) as e:
        raise FixresError(f"timm {timm.__version__} cannot load {directory} "
                          f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
    return model.eval()


def check_timm_load(directory: Path, example: torch.Tensor, reference: torch.Tensor) -> float:
    """Load ``directory`` with timm and compare its logits on ``example`` with ``reference``."""
    with torch.no_grad():
        logits = load_timm_export(directory)(example)
    diff = float((logits - reference).abs().max())
    if not diff <= TIMM_TOLERANCE * max(1.0, float(reference.abs().max())):
        raise FixresError(f"the model timm loads from the export gives other logits than fixres's "
                          f"(max abs diff {diff:.3g})")
    return diff


def export_text(out: Path, record: dict) -> str:
    """What ``fixres export`` prints of an export's ``config.json["fixres"]`` record."""
    adapted = (record.get("adaptation") or {}).get("method")
    lines = [f"exported {record['model']} to {out}: trained at {record['train_res']}px, "
             + (f"adapted ({adapted}), " if adapted else "")
             + f"test preprocessing: resize {record['resize']}, centre crop {record['test_res']} "
             f"(crop_pct {record['crop_pct']:g}), {record['interpolation']}",
             f"  timm: timm.create_model('local-dir:{out}', pretrained=True) gives fixres's logits "
             f"(max abs diff {record['timm_max_abs_diff']:.3g})"]
    if record.get("onnx"):
        o = record["onnx"]
        shape = ", ".join(map(str, o["input_size"]))
        lines.append(f"  onnx: {o['file']} (opset {o['opset']}, input {o['input']!r} [{shape}]); "
                     f"ONNX Runtime vs PyTorch max abs diff {o['max_abs_diff']:.3g} (tolerance {o['tolerance']:.3g})")
    return "\n".join(lines)


def read_export(path: str | Path) -> dict:
    """The ``config.json`` of an exported (or any timm local-dir) folder."""
    file = Path(path) / CONFIG
    try:
        config = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FixresError(f"{file}: unreadable ({e})") from None
    if not isinstance(config, dict) or "architecture" not in config:
        raise FixresError(f"{file}: not a timm model config (no 'architecture')")
    return config
