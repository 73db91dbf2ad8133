"""Classifying image files with a checkpoint's recorded test preprocessing.

Each image is decoded (:func:`~fixres.data.decode.load_rgb`), resized and centre-cropped
exactly as ``fixres eval`` does (:class:`~fixres.data.transforms.EvalTransform` at the
recorded test resolution and crop_pct), normalised with the recorded mean/std and
classified. A file that cannot be read gets a row that says why; it never stops the
others.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import find_checkpoint
from .data.decode import UnreadableImage, load_rgb
from .data.preprocessing import Preprocessing
from .data.transforms import EvalTransform
from .errors import FixresError
from .export import CONFIG, is_export, load_timm_export, read_export
from .rundir import sha256_file
from .runtime import resolve_device
from .sources import open_checkpoint


@dataclass(frozen=True)
class Classifier:
    """A model ready to classify, with the preprocessing it is meant to be used with."""

    model: nn.Module
    name: str                       # model (architecture) name
    class_names: tuple[str, ...]
    prep: Preprocessing             # its test geometry and normalisation
    source: str                     # the checkpoint or export folder it came from
    kind: str                       # "checkpoint" or "export"

    @property
    def transform(self) -> EvalTransform:
        return self.prep.test_view()

    def describe(self) -> dict:
        p = self.prep
        return {"model": self.name, "source": self.source, "kind": self.kind, "test_res": p.test_res,
                "resize": self.transform.resize_size, "crop_pct": p.crop_pct,
                "interpolation": p.interpolation, "mean": list(p.mean), "std": list(p.std)}


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one image, best first, or why it could not be read."""

    path: str
    labels: tuple[str, ...] = ()
    indices: tuple[int, ...] = ()
    probs: tuple[float, ...] = ()
    error: str | None = None

    def row(self) -> dict:
        return asdict(self)


def load_classifier(path: str | Path) -> Classifier:
    """Open a run directory, checkpoint directory, ``model.safetensors`` file or exported folder.

    A fixres checkpoint brings its recorded test resolution, crop_pct, interpolation and
    mean/std; an exported folder (any timm ``local-dir`` folder) brings what timm resolves
    from its ``config.json`` with ``use_test_size=True``.
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors" and is_export(path.parent):
        path = path.parent
    if is_export(path):
        return _load_export(path)
    directory = find_checkpoint(path)
    model, meta = open_checkpoint(directory)
    return Classifier(model, meta.model, meta.class_names, meta.preprocessing, str(directory), "checkpoint")


def _load_export(path: Path) -> Classifier:
    from timm.data import resolve_data_config
    config = read_export(path)
    record = config.get("fixres") or {}
    if record.get("weights_sha256") and (path / "model.safetensors").is_file():
        if sha256_file(path / "model.safetensors") != record["weights_sha256"]:
            raise FixresError(f"{path / 'model.safetensors'}: content does not match the hash recorded in {CONFIG}")
    model = load_timm_export(path)
    data = resolve_data_config(model=model, use_test_size=True)
    _, height, width = data["input_size"]
    if height != width or data.get("crop_mode", "center") != "center":
        raise FixresError(f"{path}: fixres predicts with a square centre crop; this model asks for a "
                          f"{height}x{width} input with crop_mode {data.get('crop_mode')!r}")
    labels = model.pretrained_cfg.get("label_names") or config.get("label_names")
    num_classes = int(model.num_classes)
    if isinstance(labels, dict):
        labels = [labels.get(str(i), labels.get(i, str(i))) for i in range(num_classes)]
    names = tuple(str(v) for v in labels) if labels and len(labels) == num_classes else \
        tuple(str(i) for i in range(num_classes))
    train_res = int(record.get("train_res", height))
    prep = Preprocessing.from_dict({"mean": data["mean"], "std": data["std"], "interpolation": str(data["interpolation"]),
                                    "crop_pct": data["crop_pct"], "test_res": int(height), "train_res": train_res},
                                   origin=f"{path / CONFIG} (timm resolve_data_config, test size)")
    return Classifier(model, config["architecture"], names, prep, str(path), "export")


@torch.no_grad()
def classify(classifier: Classifier, paths: list[str | Path], *, top_k: int = 5, device: str = "auto",
             batch_size: int = 32) -> list[Prediction]:
    """Top-``top_k`` classes and softmax probabilities of each image, in the order given."""
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise FixresError(f"top-k must be a positive integer, got {top_k!r}")
    if batch_size < 1:
        raise FixresError(f"batch size must be positive, got {batch_size}")
    k = min(top_k, len(classifier.class_names))
    dev = resolve_device(device)
    model = classifier.model.to(dev).eval()
    transform, normalize = classifier.transform, classifier.prep.normalizer()
    results: dict[int, Prediction] = {}
    pending: list[tuple[int, torch.Tensor]] = []

    def flush():
        logits = model(normalize(torch.stack([t for _, t in pending]), dev)).float()
        probs, top = logits.softmax(dim=1).topk(k, dim=1)
        for (i, _), p, t in zip(pending, probs.cpu().tolist(), top.cpu().tolist()):
            results[i] = Prediction(str(paths[i]), tuple(classifier.class_names[j] for j in t), tuple(t), tuple(p))
        pending.clear()

    for i, path in enumerate(paths):
        try:
            pending.append((i, transform(load_rgb(path))))
        except UnreadableImage as e:
            results[i] = Prediction(str(path), error=str(e))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return [results[i] for i in range(len(paths))]


def predict(checkpoint: str | Path, paths: list[str | Path], top_k: int = 5, *, device: str = "auto",
            batch_size: int = 32) -> list[Prediction]:
    """Classify image files with a checkpoint or exported folder (see :func:`load_classifier`)."""
    return classify(load_classifier(checkpoint), paths, top_k=top_k, device=device, batch_size=batch_size)
