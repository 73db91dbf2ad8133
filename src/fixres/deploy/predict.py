"""Classifying image files with a checkpoint's recorded test preprocessing.

Each image is decoded (:func:`~fixres.data.decode.load_rgb`), resized and centre-cropped
exactly as ``fixres eval`` does (:class:`~fixres.data.transforms.EvalTransform` at the
recorded test resolution and crop_pct), normalised with the recorded mean/std and
classified. A file that cannot be read gets a row that says why; it never stops the
others.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.errors import FixresError
from ..core.runtime import resolve_device
from ..data.decode import UnreadableImage, load_rgb
from ..data.preprocessing import Preprocessing
from ..data.transforms import EvalTransform
from ..models.labels import LabelSpace
from ..models.ladder import Ladder, is_ladder
from ..models.sources import ModelSource, as_source, open_model


@dataclass(frozen=True)
class Classifier:
    """A model ready to classify, with the preprocessing it is meant to be used with."""

    model: nn.Module
    name: str                       # model (architecture) name
    labels: LabelSpace              # what each output means
    prep: Preprocessing             # its test geometry and normalisation
    source: str                     # the checkpoint, export folder or model it came from
    kind: str                       # "checkpoint" or "model"

    @property
    def transform(self) -> EvalTransform:
        return self.prep.test_view()

    def describe(self) -> dict:
        p = self.prep
        return {"model": self.name, "source": self.source, "kind": self.kind, "test_res": p.test_res,
                "resize": self.transform.resize_size, "crop_pct": p.crop_pct, "crop_mode": p.crop_mode,
                "interpolation": p.interpolation, "mean": list(p.mean), "std": list(p.std),
                "classes": len(self.labels), "labels": self.labels.source}


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one image, best first, or why it could not be read."""

    path: str
    labels: tuple[str, ...] = ()            # as a person reads them (ImageNet: "goldfish", not n01443537)
    indices: tuple[int, ...] = ()
    probs: tuple[float, ...] = ()
    error: str | None = None
    names: tuple[str, ...] = ()             # the label names (class folder names, wnids)

    def row(self) -> dict:
        return asdict(self)


def load_classifier(source: "str | Path | ModelSource", *, test_res: int | None = None,
                    budget_ms: float | None = None, budget_gflops: float | None = None) -> Classifier:
    """Open a checkpoint (run directory, checkpoint directory, ``model.safetensors``), an exported
    folder or any :class:`~fixres.models.sources.ModelSource`: the model, its recorded (or declared)
    test preprocessing and its label space. A ladder's rung is the one at ``test_res``, or the
    most accurate within the budgets (:meth:`~fixres.models.ladder.Ladder.choose`); another model
    is used at ``test_res`` when given (its crop fraction kept)."""
    source = as_source(source)
    budgets = budget_ms is not None or budget_gflops is not None
    rung = None
    if source.checkpoint is not None and is_ladder(source.checkpoint):
        ladder = Ladder.open(source.checkpoint)
        rung = ladder.choose(test_res=test_res, budget_ms=budget_ms, budget_gflops=budget_gflops)
        source, test_res = dataclasses.replace(source, checkpoint=str(ladder.root / rung["dir"])), None
    elif budgets:
        raise FixresError(f"--budget-ms / --budget-gflops choose a rung of a ladder; {source.checkpoint or source.model} "
                          "is one model (give --test-res, or a ladder: fixres adapt --test-res R1 R2 ...)")
    opened = open_model(source)
    prep = opened.meta.preprocessing.override("--test-res", test_res=test_res)
    name = opened.name if rung is None else f"{opened.name} (rung {rung['test_res']}px of the ladder)"
    return Classifier(opened.model, opened.meta.model, opened.labels, prep, name,
                      "model" if opened.foreign else "checkpoint")


def predictions_text(classifier: Classifier, rows: list[Prediction]) -> str:
    """What ``fixres predict`` prints: the preprocessing, then one line per image."""
    d = classifier.describe()
    mode = f", {d['crop_mode']}" if d["crop_mode"] != "center" else ""
    lines = [f"{d['model']} at {d['test_res']}px (resize {d['resize']}, crop_pct {d['crop_pct']:g}, "
             f"{d['interpolation']}{mode}) from {d['source']}, {d['classes']} classes ({d['labels']})"]
    for r in rows:
        text = (f"unreadable ({r.error})" if r.error
                else "  ".join(f"{label} {100 * p:.1f}%" for label, p in zip(r.labels, r.probs)))
        lines.append(f"{r.path}: {text}")
    return "\n".join(lines)


@torch.no_grad()
def classify(classifier: Classifier, paths: list[str | Path], *, top_k: int = 5, device: str = "auto",
             batch_size: int = 32) -> list[Prediction]:
    """Top-``top_k`` classes and softmax probabilities of each image, in the order given."""
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise FixresError(f"top-k must be a positive integer, got {top_k!r}")
    if batch_size < 1:
        raise FixresError(f"batch size must be positive, got {batch_size}")
    k = min(top_k, len(classifier.labels))
    dev = resolve_device(device)
    model = classifier.model.to(dev).eval()
    transform, normalize = classifier.transform, classifier.prep.normalizer()
    results: dict[int, Prediction] = {}
    pending: list[tuple[int, torch.Tensor]] = []

    def flush():
        logits = model(normalize(torch.stack([t for _, t in pending]), dev)).float()
        probs, top = logits.softmax(dim=1).topk(k, dim=1)
        for (i, _), p, t in zip(pending, probs.cpu().tolist(), top.cpu().tolist()):
            results[i] = Prediction(str(paths[i]), tuple(classifier.labels.display(j) for j in t), tuple(t), tuple(p),
                                    names=tuple(classifier.labels.names[j] for j in t))
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


def predict(checkpoint: "str | Path | ModelSource", paths: list[str | Path], top_k: int = 5, *, device: str = "auto",
            batch_size: int = 32) -> list[Prediction]:
    """Classify image files with a checkpoint or exported folder (see :func:`load_classifier`)."""
    return classify(load_classifier(checkpoint), paths, top_k=top_k, device=device, batch_size=batch_size)
