"""Where a model comes from: a fixres checkpoint, or a model someone else trained.

Every command that takes a model takes a :class:`ModelSource` (the same flags everywhere):

* ``--checkpoint PATH``: a fixres checkpoint (run directory, checkpoint directory or
  ``model.safetensors``), with the preprocessing and classes it records;
* ``--model NAME --pretrained``: timm's weights for ``NAME`` (downloaded: needs internet);
* ``--model NAME --weights FILE``: local weights (``.safetensors``, or a torch file read
  with ``weights_only=True``, never unpickled), loaded through timm's own pretrained-weights
  path (its per-architecture key conversion, e.g. torchvision's ResNet names);
* ``--model hf-hub:ORG/NAME`` (Hugging Face hub) or ``--model local-dir:PATH`` (any timm
  folder: ``config.json`` + weights; a ``fixres export`` included).

A foreign model brings its preprocessing from its timm pretrained config (mean, std,
interpolation, crop mode; ``input_size`` is its training resolution; its TEST geometry is
``test_input_size`` / ``test_crop_pct`` where the config has them, as timm's validate.py
evaluates), each value overridable by a flag and recorded with where it came from; its label
space from ``--class-map``, its config's ``label_names``, or timm's ImageNet description.
:func:`open_for_data` then binds a dataset's class folders to that label space
(:mod:`fixres.models.labels`), cutting the classifier down with ``restrict_labels``.

The module sits above :mod:`fixres.models.checkpoint` (files) and :mod:`fixres.models` (building):
neither reaches into the other.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Literal, Optional

import timm
import torch
from torch import nn

from ..core.errors import FixresError
from ..core.options import option
from ..core.rundir import sha256_file
from ..data.folder import list_classes
from ..data.preprocessing import Preprocessing
from ..data.transforms import check_resolution
from .checkpoint import CheckpointMeta, find_checkpoint, load_checkpoint, read_meta
from .equaliser import reapply_adaptation
from .factory import check_model_name, create_model, model_with_weights, read_state_dict
from .heads import restrict_outputs
from .ladder import is_ladder, rung_checkpoint
from .switchable_state import collapse, is_switchable_state
from .labels import (Binding, LabelSpace, bind, config_space, imagenet_space, numbered_space, read_class_map,
                     read_valid_labels)
from .sizes import size_kwargs

DEFAULT_CROPS_NOTE = ("the weights' training crops are not recorded: RandomResizedCrop defaults (scale 0.08-1, "
                      "ratio 3/4-4/3, flip 0.5) assumed")


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    """The model a command works on, and how its preprocessing and labels are read."""

    checkpoint: Optional[str] = option(None, "a fixres checkpoint: run directory (its best checkpoint), checkpoint "
                                             "directory or model.safetensors file")
    model: Optional[str] = option(None, "a model someone else trained: a timm name with its weights tag "
                                        "(resnet50.a1_in1k; with --pretrained or --weights), hf-hub:ORG/NAME, or "
                                        "local-dir:PATH (a timm folder, e.g. a fixres export)")
    pretrained: bool = option(False, "with --model NAME: timm's pretrained weights (downloads them: needs internet)")
    weights: Optional[str] = option(None, "with --model NAME: local weights (.safetensors, or a torch file read "
                                          "weights-only; timm key names, or torchvision's where timm converts them)")
    class_map: Optional[str] = option(None, "the model's classes: one class folder name per line, its line number the "
                                            "output index (timm validate.py's --class-map)")
    ema: bool = option(False, "with --checkpoint: the run's EMA weights (a checkpoint of `fixres train --ema-decay`), "
                              "recorded as such downstream")
    restrict_labels: bool = option(False, "predict over the dataset's classes only (argmax among them: the "
                                          "ImageNet-R/-A convention; the classes of train/ and val/ together, for every "
                                          "command); an adapted checkpoint keeps only their outputs")
    valid_labels: Optional[str] = option(None, "predict over these outputs only: a file of the model's output indices, "
                                               "one integer per line (timm validate.py's --valid-labels, e.g. the 200 "
                                               "of ImageNet-A/R); the dataset's folders must be among their labels",
                                         metavar="FILE")
    mean: Optional[tuple[float, ...]] = option(None, "normalisation mean (default: the model's)", metavar="M")
    std: Optional[tuple[float, ...]] = option(None, "normalisation std (default: the model's)", metavar="S")
    interpolation: Optional[Literal["bilinear", "bicubic", "nearest"]] = option(
        None, "resize filter (default: the model's)")
    crop_mode: Optional[Literal["center", "squash", "border"]] = option(
        None, "test resize: center (shorter side to test_res/crop_pct), squash (both sides), border (longer side, "
              "padded with the mean colour), as timm (default: the model's)")
    train_res: Optional[int] = option(None, "the resolution the weights were trained at (default: the checkpoint's, "
                                            "or the model's input_size)")
    scale: Optional[tuple[float, float]] = option(None, "the training RandomResizedCrop area range (default: the "
                                                        "checkpoint's, or 0.08 1)", metavar=("MIN", "MAX"))
    ratio: Optional[tuple[float, float]] = option(None, "the training RandomResizedCrop aspect range (default: the "
                                                        "checkpoint's, or 3/4 4/3)", metavar=("MIN", "MAX"))

    def __post_init__(self):
        if (self.checkpoint is None) == (self.model is None):
            raise FixresError("give a model: --checkpoint PATH (a fixres checkpoint) or --model NAME "
                              "(with --pretrained or --weights FILE), not both")
        if self.checkpoint is not None and (self.pretrained or self.weights or self.class_map):
            raise FixresError("--pretrained, --weights and --class-map go with --model, not with --checkpoint")
        if self.model is not None and self.ema:
            raise FixresError("--ema reads a fixres run's EMA weights: it goes with --checkpoint, not with --model")
        if self.pretrained and self.weights:
            raise FixresError("give either --pretrained or --weights, not both")
        if self.valid_labels is not None and self.restrict_labels:
            raise FixresError("give --restrict-labels (the dataset's classes) or --valid-labels FILE (a fixed set of "
                              "outputs), not both")
        if self.train_res is not None:
            check_resolution(self.train_res, "train_res")

    @property
    def overrides(self) -> dict:
        return dict(mean=self.mean, std=self.std, interpolation=self.interpolation, crop_mode=self.crop_mode,
                    train_res=self.train_res, scale=self.scale, ratio=self.ratio)


def is_timm_folder(path: str | Path) -> bool:
    """A timm model folder (``config.json``, no fixres ``meta.json``): e.g. a ``fixres export``."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and not (path / "meta.json").is_file()


def as_source(source: "str | Path | ModelSource") -> ModelSource:
    """A :class:`ModelSource`, or a path: a fixres checkpoint (as every command took before),
    or a timm folder (a ``fixres export``: as ``--model local-dir:PATH``). A source whose
    ``checkpoint`` names a timm folder becomes that ``local-dir:`` model, so that every
    ``checkpoint`` downstream is a fixres checkpoint."""
    if isinstance(source, ModelSource):
        folder = as_source(source.checkpoint).model if source.checkpoint is not None else None
        if folder and source.ema:
            raise FixresError(f"{source.checkpoint} is an export (a timm folder): it holds one set of weights, the "
                              "EMA's already if it was exported with --ema (config.json['fixres']['source']"
                              "['weights'] says which); drop --ema")
        return replace(source, checkpoint=None, model=folder) if folder else source
    path = Path(source)
    if path.suffix == ".safetensors" and is_timm_folder(path.parent):
        path = path.parent
    if is_timm_folder(path):
        return ModelSource(model=f"local-dir:{path}")
    return ModelSource(checkpoint=str(source))


def at_resolution(source: "str | Path | ModelSource", test_res: int | None) -> ModelSource:
    """``source``, or for a ladder (:mod:`fixres.models.ladder`) its rung at ``test_res`` (one
    line naming the rungs when there is none there)."""
    source = as_source(source)
    if source.checkpoint is not None and is_ladder(source.checkpoint):
        return replace(source, checkpoint=str(rung_checkpoint(source.checkpoint, test_res)))
    return source


@dataclass
class Opened:
    """A model ready for evaluation, its metadata (what a checkpoint would record), and, once
    bound to a dataset, how the dataset's folders map onto its outputs."""

    model: nn.Module
    meta: CheckpointMeta
    name: str                          # what reports call it: the checkpoint directory or the --model name
    directory: Path | None = None      # the checkpoint directory, for a fixres checkpoint
    binding: Binding | None = None

    @property
    def foreign(self) -> bool:
        return self.meta.weights_from is not None

    @property
    def labels(self) -> LabelSpace:
        return label_space(self.meta)


def label_space(meta: CheckpointMeta) -> LabelSpace:
    return LabelSpace(meta.class_names, meta.label_descriptions, meta.label_source or "the checkpoint's classes")


# ----------------------------------------------------------------------------- fixres checkpoints
def build_model(meta: CheckpointMeta, state: dict[str, torch.Tensor]) -> nn.Module:
    """Instantiate the checkpoint's model and load its weights (strictly), then re-attach what
    its adaptation changed outside the weights (a parametric equaliser)."""
    model = create_model(meta.model, meta.num_classes, **meta.model_kwargs)
    if (meta.recipe or {}).get("switchable_res") and is_switchable_state(state):   # its largest resolution's path
        state = collapse(state, -1)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise FixresError(f"checkpoint weights do not fit {meta.model}: {first[1].strip() if len(first) > 1 else first[0]}") from None
    reapply_adaptation(model, meta)
    return model


def open_checkpoint(path: str | Path, ema: bool = False) -> tuple[nn.Module, CheckpointMeta]:
    """The model of a checkpoint, ready for evaluation, and its metadata; ``ema``: with the
    run's EMA weights (see :func:`~fixres.models.checkpoint.load_checkpoint`)."""
    state, meta, _ = load_checkpoint(path, ema=ema)
    model = build_model(meta, state)
    model.eval()
    return model, meta


# ----------------------------------------------------------------------------- foreign models
def open_model(source: "str | Path | ModelSource") -> Opened:
    """The model ``source`` names, in eval mode, with its metadata (preprocessing overrides applied)."""
    source = as_source(source)
    if source.checkpoint is not None:
        directory = find_checkpoint(source.checkpoint, ema=source.ema)
        model, meta = open_checkpoint(directory, ema=source.ema)
        opened = Opened(model, meta, str(directory), directory)
    else:
        opened = _open_foreign(source)
    prep = opened.meta.preprocessing.override("flag", **source.overrides)
    opened.meta = opened.meta.replace(preprocessing=prep)
    return opened


def _open_foreign(source: ModelSource) -> Opened:
    name = source.model
    check_model_name(name)
    hub = name.startswith(("hf-hub:", "hf_hub:"))
    local = name.startswith("local-dir:")
    if (hub or local) and (source.pretrained or source.weights):
        raise FixresError(f"{name} brings its own weights: drop --pretrained / --weights")
    if not (hub or local or source.pretrained or source.weights):
        raise FixresError(f"--model {name} needs weights: --pretrained (timm's, online) or --weights FILE "
                          "(random weights would measure nothing)")
    config, where = {}, name
    if local:
        config, where = _local_config(Path(name.split(":", 1)[1]))
        _check_recorded_hash(Path(name.split(":", 1)[1]), config)
        model = _timm_create(name, pretrained=True, **size_kwargs(config.get("architecture", "")))
    elif hub:
        check_hub(name)            # before the config download, which retries for most of a minute offline
        config = _hub_config(name)
        model = _timm_create(name, pretrained=True, **size_kwargs(config.get("architecture", "")))
    elif source.weights:
        model = _with_weights(name, Path(source.weights))
        where = f"{name} + {source.weights}"
    else:
        model = _timm_create(name, pretrained=True, **size_kwargs(name))
    model.eval()
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    num_classes = int(getattr(model, "num_classes", 0) or cfg.get("num_classes") or 0)
    space = (read_class_map(source.class_map, num_classes) if source.class_map else
             config_space(config.get("label_names") or cfg.get("label_names"), num_classes, where)
             or imagenet_space(num_classes) or numbered_space(num_classes))
    descriptions = space.descriptions or _descriptions(config.get("label_descriptions")
                                                       or cfg.get("label_descriptions"), space.names)
    recorded = (config.get("fixres") or {}).get("preprocessing")     # a fixres export records its whole record
    prep = (Preprocessing.from_dict(recorded, origin=f"{where} (fixres export)") if recorded
            else Preprocessing.from_pretrained_cfg(model.pretrained_cfg, where))
    rebuilt_as = name if not (hub or local) else config.get("architecture") or cfg.get("architecture") or name
    meta = CheckpointMeta(model=rebuilt_as, class_names=space.names, preprocessing=prep, label_descriptions=descriptions,
                          label_source=space.source, model_kwargs=dict(config.get("model_args") or {}),
                          weights_from={"model": name, "pretrained": source.pretrained or hub,
                                        "weights": source.weights, "config": where if local else None,
                                        "note": "" if recorded else DEFAULT_CROPS_NOTE})
    return Opened(model, meta, name)


HUB = ("huggingface.co", 443)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (where timm's weights live) answers, checked in seconds: an
    offline download would otherwise retry for most of a minute before failing. Behind a proxy
    (``HTTPS_PROXY``) the download is simply attempted."""
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True
    try:
        socket.create_connection(HUB, timeout=timeout).close()
        return True
    except OSError:
        return False


def _descriptions(raw, names: tuple[str, ...]) -> tuple[str, ...]:
    """timm's ``label_descriptions`` (label name -> description, or a list by index), if it
    describes every label."""
    if isinstance(raw, dict):
        raw = [raw.get(n, "") for n in names]
    return tuple(str(d) for d in raw) if raw and len(raw) == len(names) else ()


def check_hub(name: str) -> None:
    """Before any download: a Hugging Face hub name that is empty, or a hub that cannot be reached
    (fail in seconds, with advice that works for a hub model), unless ``HF_HUB_OFFLINE`` asks
    for the local cache."""
    repo = name.split(":", 1)[1].strip() if ":" in name else ""
    if name.startswith(("hf-hub:", "hf_hub:")) and not repo:
        raise FixresError(f"{name!r} names no model: hf-hub:ORG/NAME (e.g. hf-hub:timm/resnet50.a1_in1k)")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return          # the hub library reads its cache (and says so if the model is not in it)
    if not hub_reachable():
        if name.startswith(("hf-hub:", "hf_hub:")):
            raise FixresError(f"cannot download {name}: {HUB[0]} is not reachable (offline?); with the model in "
                              "the hub cache, set HF_HUB_OFFLINE=1; or give a timm folder as --model local-dir:PATH "
                              "(its config.json and weights), or the architecture's timm name with --weights FILE")
        raise FixresError(f"cannot download the weights of {name}: {HUB[0]} is not reachable (offline?); give a "
                          "local file with --weights FILE (or --model local-dir:PATH)")


def _timm_create(name: str, **kwargs) -> nn.Module:
    # a hub name is resolved online even without its weights (timm reads its config.json there)
    downloads = name.startswith(("hf-hub:", "hf_hub:")) or (kwargs.get("pretrained") and not name.startswith("local-dir:"))
    if downloads:
        check_hub(name)
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)     # its retry messages would bury the one line that matters
    try:
        return timm.create_model(name, **kwargs)
    except (OSError, ConnectionError, RuntimeError, ValueError, KeyError) as e:
        if downloads:
            raise FixresError(f"could not get the weights of {name} ({type(e).__name__}); without internet, give a "
                              "local file with --weights FILE (or --model local-dir:PATH)") from None
        raise FixresError(f"timm cannot build {name} ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})") \
            from None
    finally:
        hub_log.setLevel(level)


def _with_weights(name: str, path: Path) -> nn.Module:
    """``name`` with the weights of ``path`` in their own label space (their classifier's size),
    through timm's pretrained-weights loader (:func:`~fixres.models.factory.model_with_weights`)."""
    return model_with_weights(name, read_state_dict(path), str(path))[0]


def _local_config(directory: Path) -> tuple[dict, str]:
    file = directory / "config.json"
    if not directory.exists():
        raise FixresError(f"local-dir:{directory} does not exist")
    if not file.exists() and any((directory / n).exists() for n in ("config.yaml", "meta.json", "best", "last")):
        raise FixresError(f"local-dir:{directory} is a fixres run or checkpoint, not a timm folder: use "
                          f"--checkpoint {directory} (or fixres export it first)")
    try:
        return json.loads(file.read_text()), str(file)
    except FileNotFoundError:
        raise FixresError(f"local-dir:{directory}: no config.json (a timm model folder holds config.json and its "
                          "weights)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise FixresError(f"{file}: unreadable ({e})") from None


def _check_recorded_hash(directory: Path, config: dict) -> None:
    """A fixres export records the hash of its weights: a changed or corrupt file is refused."""
    recorded = (config.get("fixres") or {}).get("weights_sha256")
    weights = directory / "model.safetensors"
    if recorded and weights.is_file() and sha256_file(weights) != recorded:
        raise FixresError(f"{weights}: content does not match the hash recorded in {directory / 'config.json'}")


def _hub_config(name: str) -> dict:
    """model_args, architecture and label names of a hub model (timm caches the config)."""
    try:
        from timm.models import load_model_config_from_hf
        cfg, architecture, args = load_model_config_from_hf(name.split(":", 1)[1])[:3]
    except Exception:        # its weights just loaded, so this is only a missing optional record
        return {}
    return {"architecture": architecture, "model_args": args or {}, "label_names": cfg.get("label_names")}


def declared_preprocessing(source: ModelSource) -> Preprocessing:
    """The preprocessing a model records (checkpoint) or declares (timm config), without its
    weights: a timm model is built on the meta device, a checkpoint's metadata is read."""
    source = as_source(source)
    if source.checkpoint is not None:
        return read_meta(source.checkpoint).preprocessing
    name = source.model
    check_model_name(name)
    if name.startswith("local-dir:"):
        recorded = (_local_config(Path(name.split(":", 1)[1]))[0].get("fixres") or {}).get("preprocessing")
        if recorded:
            return Preprocessing.from_dict(recorded, origin=f"{name} (fixres export)")
    with torch.device("meta"):
        model = _timm_create(name, pretrained=False)
    return Preprocessing.from_pretrained_cfg(model.pretrained_cfg, name)


# ----------------------------------------------------------------------------- binding a dataset
LABEL_SPLITS = ("train", "val")     # whose class folders make the label mask of --restrict-labels


def open_for_data(source: "str | Path | ModelSource", data: str | Path, splits: Iterable[str]) -> Opened:
    """:func:`open_model`, then bind the class folders of ``data/<split>`` (every split given
    that exists) to its label space; with ``restrict_labels`` the classifier keeps only the
    outputs of those classes and the metadata names only them."""
    source, splits = as_source(source), list(dict.fromkeys(splits))
    root = Path(data)
    if not root.is_dir():
        raise FixresError(f"data directory {root} does not exist")
    present = [s for s in splits if (root / s).is_dir()]
    if not present:
        raise FixresError(f"{root} has no {' or '.join(s + '/' for s in splits)} directory "
                          f"(expected {root}/<split>/<class>/<images>)")
    valid = read_valid_labels(source.valid_labels) if source.valid_labels else None
    opened = open_model(source)
    # One rule for every command: the label mask is the class folders of train/ and val/ together
    # (and of any other split the command reads), so that eval, sweep and adapt agree.
    bound = [s for s in dict.fromkeys([*LABEL_SPLITS, *present]) if (root / s).is_dir()]
    folders: dict[str, None] = {}
    for split in bound:
        folders.update(dict.fromkeys(list_classes(root / split)))
    binding = bind(opened.labels, folders, f"{root}/{'{' + ','.join(bound) + '}' if len(bound) > 1 else bound[0]}",
                   restrict=source.restrict_labels, valid=valid)
    if binding.restricted:
        restrict_outputs(opened.model, binding.kept)
        space = binding.space
        opened.meta = opened.meta.replace(class_names=space.names, label_descriptions=space.descriptions,
                                          label_source=space.source)
    opened.binding = binding
    return opened
