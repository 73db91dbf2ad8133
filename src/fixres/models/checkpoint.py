"""Checkpoints: weights as safetensors, metadata as JSON, written atomically.

A checkpoint is a directory::

    model.safetensors   the model's state dict (weights and batch-norm buffers)
    meta.json           what is needed to use it: model name, classes, preprocessing,
                        resolutions, metrics, the data index digest, how it was adapted
    state.pt            (training checkpoints only) optimiser, scaler, random states and
                        position, loaded with ``weights_only=True``
    ema.safetensors     (runs with --ema-decay) the EMA of the weights, a whole state dict of
                        the same model; ``load_checkpoint(path, ema=True)`` reads it instead

It is written into a temporary directory, fsynced and renamed into place, so a crash
leaves either the old checkpoint or the new one, never half of one. A run directory keeps
its checkpoints under ``checkpoints/`` with symbolic links, ``last``, ``best`` and (runs with
an EMA) ``best-ema``, that are themselves replaced atomically.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..core.errors import FixresError
from ..core.faults import pause_point
from ..core.options import read_yaml
from ..core.progress import notice
from ..core.rundir import TEMP_PREFIX, TRASH_PREFIX, atomic_path, sha256_file
from ..data.index import SplitIndex, split_holdout
from ..data.preprocessing import TRAIN_CROP_FIELDS, Preprocessing

FORMAT = "fixres-checkpoint/2"
LEGACY_FORMAT = "fixres-checkpoint/1"      # flat geometry fields, no training crop settings
WEIGHTS, META, STATE, EMA_WEIGHTS = "model.safetensors", "meta.json", "state.pt", "ema.safetensors"
LINKS = ("last", "best", "best-ema")   # a run directory's links to its checkpoints


@dataclass(frozen=True)
class CheckpointMeta:
    model: str
    class_names: tuple[str, ...]
    preprocessing: Preprocessing       # normalisation, test geometry (what it is meant to be tested at), train crops
    epoch: int = 0                     # completed epochs
    step: int = 0                      # completed optimiser steps
    metrics: dict = field(default_factory=dict)
    data_digest: str = ""
    holdout: dict | None = None        # {"fraction", "seed"}: training images held out (see data.index.split_holdout)
    model_kwargs: dict = field(default_factory=dict)
    adaptation: dict | None = None     # set by fixres adapt: method, source, accuracy before/after
    label_descriptions: tuple[str, ...] = ()   # per class, human-readable (ImageNet: "goldfish, Carassius auratus")
    label_source: str = ""             # where the class names come from ("" = the training folders)
    weights_from: dict | None = None   # a model fixres did not train: where its weights came from (sources.py)
    recipe: dict | None = None         # set by fixres train: optimiser, loss, mixup, policies, EMA, resolution schedule;
                                       # "weights": "ema" when these weights are a run's EMA
    ema: dict | None = None            # the EMA weights beside these ({"decay", "weights_sha256", "metrics",
                                       # "selection"}), if any
    selection: dict | None = None      # set by fixres train: what chose the run's best epoch (split, metric,
                                       # weights, geometry; fixres.train.select)
    base: dict | None = None           # a ladder rung: {"path": the full checkpoint it changes (relative),
                                       # "weights_sha256": its weights' hash}; its own weights file then holds
                                       # only the tensors its adaptation changed (fixres.adapt.ladder)
    weights_sha256: str = ""
    format: str = FORMAT
    versions: dict = field(default_factory=dict)
    created: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> str:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["class_names"] = list(self.class_names)
        d["label_descriptions"] = list(self.label_descriptions)
        d["preprocessing"] = self.preprocessing.to_dict()
        d["num_classes"] = self.num_classes
        return json.dumps(d, indent=2)

    @classmethod
    def from_dict(cls, d: dict, source: Path) -> "CheckpointMeta":
        fmt = d.get("format")
        if fmt not in (FORMAT, LEGACY_FORMAT):
            raise FixresError(f"{source}: not a fixres checkpoint (format {fmt!r}, expected {FORMAT!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            prep = (Preprocessing.from_dict(d["preprocessing"]) if fmt == FORMAT
                    else legacy_preprocessing(d, source))
            d = {k: v for k, v in d.items() if k in names}
            d.update(class_names=tuple(d["class_names"]), preprocessing=prep, format=FORMAT,
                     label_descriptions=tuple(d.get("label_descriptions") or ()))
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise FixresError(f"{source}: checkpoint metadata is incomplete ({e})") from None

    def replace(self, **changes) -> "CheckpointMeta":
        return dataclasses.replace(self, **changes)

    def split_training_images(self, train: SplitIndex) -> tuple[SplitIndex, SplitIndex]:
        """``(trained on, held out)``: the checkpoint's held-out images rebuilt from the training
        split it was trained on (``holdout`` fraction and seed). A split whose index digest differs
        from the recorded one is refused: rebuilt on another file list, the held-out images would
        be others, and a later command would call images that trained the model held out."""
        if not self.holdout:
            return train, train.subset([], keep_skipped=False)
        recorded = self.data_digest.split("-")[0]
        if recorded and recorded != train.digest():
            raise FixresError(f"{train.root} is not the training split the checkpoint was trained on (index digest "
                              f"differs: files added, removed or changed): the images it held out cannot be rebuilt; "
                              "use the run's own data directory")
        return split_holdout(train, float(self.holdout["fraction"]), int(self.holdout["seed"]))


def run_config_of(directory: Path) -> Path | None:
    """The ``config.yaml`` of the run a checkpoint directory belongs to (``RUN/checkpoints/NAME``),
    or None for a checkpoint outside a run directory."""
    directory = Path(directory).resolve()
    config = directory.parent.parent / "config.yaml"
    return config if directory.parent.name == "checkpoints" and config.is_file() else None


def legacy_preprocessing(d: dict, directory: Path) -> Preprocessing:
    """The preprocessing of a checkpoint written before it was stored whole: the flat geometry
    fields, and the training crop settings from its run's config.yaml when there is one
    (else the defaults), said once."""
    flat = {k: d[k] for k in ("mean", "std", "interpolation", "crop_pct", "train_res", "test_res")}
    prep = Preprocessing.from_dict(flat, origin="checkpoint")
    config = run_config_of(directory)
    if config is None:
        notice(f"{directory}: written by an older fixres that did not record its training crop settings; "
               "using the defaults (scale 0.08-1, ratio 3/4-4/3, flip 0.5, no jitter)")
        return prep
    settings = read_yaml(config)
    crops = {k: settings[k] for k in TRAIN_CROP_FIELDS if settings.get(k) is not None}
    notice(f"{directory}: written by an older fixres; training crop settings read from {config}")
    return prep.override(str(config), **crops)


def versions() -> dict:
    import timm

    from ..version import __version__
    return {"fixres": __version__, "torch": torch.__version__, "timm": timm.__version__}


def state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(directory: str | Path, model: nn.Module, meta: CheckpointMeta,
                    train_state: dict[str, Any] | None = None, ema_model: nn.Module | None = None) -> CheckpointMeta:
    """Write a checkpoint directory atomically (replacing one of the same name); with
    ``ema_model``, its weights too (``meta.ema`` then records their hash)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory, existing="replace", fsync=True) as tmp:
        tmp.mkdir()
        save_file(state_dict_for_saving(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        if ema_model is not None:
            save_file(state_dict_for_saving(ema_model), str(tmp / EMA_WEIGHTS), metadata={"format": "pt"})
            meta = meta.replace(ema={**(meta.ema or {}), "weights_sha256": sha256_file(tmp / EMA_WEIGHTS)})
        else:
            meta = meta.replace(ema=None)
        meta = meta.replace(weights_sha256=sha256_file(tmp / WEIGHTS), versions=versions(),
                            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        (tmp / META).write_text(meta.to_json())
        if train_state is not None:
            torch.save(train_state, tmp / STATE)
        pause_point("checkpoint-write")
    return meta


def point(link: Path, target: Path) -> None:
    """Make ``link`` a relative symbolic link to ``target``, atomically."""
    with atomic_path(link, fsync=True) as tmp:
        os.symlink(os.path.relpath(target, link.parent), tmp)


def delete_checkpoint(directory: Path) -> None:
    """Delete a checkpoint directory so that a kill at any moment leaves it whole or gone: it is
    first renamed to a hidden ``.trash-*`` sibling (atomic), which :func:`remove_stale_temporaries`
    clears if the deletion itself is interrupted."""
    trash = directory.parent / f"{TRASH_PREFIX}{directory.name}-{os.getpid()}"
    os.rename(directory, trash)
    shutil.rmtree(trash)


def remove_stale_temporaries(directory: Path) -> list[str]:
    """Delete what an interrupted :func:`save_checkpoint` or :func:`point` left behind
    (hidden ``.tmp-*`` / ``.trash-*`` entries); the checkpoints themselves are untouched."""
    removed = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        if entry.name.startswith((TEMP_PREFIX, TRASH_PREFIX)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry.name)
    return removed


def find_checkpoint(path: str | Path, ema: bool = False) -> Path:
    """The checkpoint directory that ``path`` names.

    Accepts a checkpoint directory, a run directory (its ``best``, else ``last`` checkpoint;
    with ``ema``, its ``best-ema`` first: the epoch chosen on the EMA's metrics), or a
    ``model.safetensors`` file with its ``meta.json`` beside it.
    """
    path = Path(path)
    if not path.exists():
        raise FixresError(f"checkpoint {path} does not exist")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise FixresError(f"{path}: a checkpoint must be a .safetensors file, a checkpoint directory or a run directory")
        if not (path.parent / META).is_file():
            raise FixresError(f"{path}: no {META} beside it (fixres needs the model name, classes and preprocessing)")
        return path.parent
    if (path / META).is_file() and (path / WEIGHTS).is_file():
        return path
    for name in (("best-ema",) if ema else ()) + ("best", "last"):
        if (path / name / META).is_file():
            return (path / name).resolve()
    if (path / "ladder.json").is_file():
        raise FixresError(f"{path} is a ladder: eval, sweep, predict and export take it (eval and predict with "
                          f"--test-res or a budget); elsewhere give one of its rungs, {path}/rungs/<res>, or its "
                          f"base, {path}/base")
    raise FixresError(f"{path} holds no fixres checkpoint (no {META} + {WEIGHTS}, no best/ or last/)")


def read_meta(path: str | Path) -> CheckpointMeta:
    directory = find_checkpoint(path)
    try:
        data = json.loads((directory / META).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FixresError(f"{directory / META}: unreadable metadata ({e})") from None
    return CheckpointMeta.from_dict(data, directory)


def load_checkpoint(path: str | Path, verify: bool = True,
                    ema: bool = False) -> tuple[dict[str, torch.Tensor], CheckpointMeta, Path]:
    """Return ``(state_dict, meta, directory)`` of the checkpoint that ``path`` names.

    ``ema``: its EMA weights instead (refused when it has none); the metadata returned then
    describes them as the checkpoint's weights (``recipe["weights"] == "ema"``, their hash, the
    EMA's metrics), so that what is built from them (an adapted checkpoint, an export) says so.
    """
    directory = find_checkpoint(path, ema=ema)
    meta = read_meta(directory)
    weights = directory / WEIGHTS
    if ema:
        if (meta.recipe or {}).get("weights") == "ema":
            raise FixresError(f"{directory} was made from a run's EMA weights ({'adapted' if meta.adaptation else 'its'} "
                              "weights are the EMA's, recipe['weights'] == 'ema'): drop --ema")
        if not meta.ema or not (directory / EMA_WEIGHTS).is_file():
            raise FixresError(f"{directory} holds no EMA weights (train with --ema-decay to keep them)")
        weights = directory / EMA_WEIGHTS
        meta = meta.replace(weights_sha256=meta.ema["weights_sha256"], metrics=meta.ema.get("metrics", {}),
                            selection=meta.ema.get("selection", meta.selection),
                            recipe={**(meta.recipe or {}), "weights": "ema", "ema_decay": meta.ema.get("decay")},
                            ema=None)
    state = _read_weights(weights, meta.weights_sha256 if verify else "")
    if meta.base:       # a ladder rung: the full weights it changes, then its own tensors over them
        base = (directory / meta.base["path"]).resolve()
        state = {**_read_weights(base / WEIGHTS, meta.base["weights_sha256"] if verify else ""), **state}
    return state, meta, directory


def _read_weights(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FixresError(f"{path} does not exist")
    if sha256 and sha256_file(path) != sha256:
        raise FixresError(f"{path}: content does not match the hash recorded in {META} (file changed or corrupt)")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise FixresError(f"{path}: unreadable safetensors file ({e})") from None


def save_rung(directory: Path, tensors: dict[str, torch.Tensor], meta: CheckpointMeta, base: Path) -> CheckpointMeta:
    """Write a ladder rung: ``tensors`` (only what its adaptation changed) and its metadata,
    which names the full checkpoint ``base`` they apply to (relative, so the ladder moves whole)."""
    base_meta = read_meta(base)
    meta = meta.replace(base={"path": os.path.relpath(base, directory), "weights_sha256": base_meta.weights_sha256},
                        ema=None)
    directory.mkdir(parents=True)
    save_file({k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}, str(directory / WEIGHTS),
              metadata={"format": "pt"})
    meta = meta.replace(weights_sha256=sha256_file(directory / WEIGHTS), versions=versions(),
                        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    (directory / META).write_text(meta.to_json())
    return meta


def load_train_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / STATE
    if not path.is_file():
        raise FixresError(f"{directory} has no {STATE}: it cannot be resumed")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FixresError(f"{path}: unreadable training state ({type(e).__name__}: {e})") from None
