"""Which epoch is ``best``: the per-epoch evaluations and the choice made on them.

Every evaluated epoch is measured at ONE geometry, the run's final test geometry (``test_res``,
``crop_pct``), whatever resolution the epoch was trained at (a progressive-resizing run's
early epochs included), so that epochs are compared on equal terms.

The best epoch is chosen on the training images held out by ``--holdout`` when the run has
them, and on val only when it has none (said in the summary and the checkpoint's
``selection`` record: choosing on val and reporting val is optimistic). A run with an EMA of
its weights keeps two choices, as the weights downstream commands use: ``best`` on the model's
metrics, ``best-ema`` on the EMA's (what ``--checkpoint RUN --ema`` opens; timm chooses on the EMA).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..core.runtime import Runtime, average_batchnorm_buffers
from ..data.index import SplitIndex
from ..data.preprocessing import Preprocessing
from ..measure.infer import evaluate

VAL_NOTE = "no training images held out (train with --holdout): the best epoch was chosen on val, whose accuracy " \
           "at that epoch is then optimistic"


@dataclass(frozen=True)
class Selection:
    """What chooses the best epoch: the split, the metric, the geometry."""

    split: str                   # "holdout" or "val"
    index: SplitIndex
    test_res: int
    crop_pct: float

    def record(self, weights: str) -> dict:
        return {"split": self.split, "metric": "top1", "weights": weights, "test_res": self.test_res,
                "crop_pct": self.crop_pct, "note": "" if self.split == "holdout" else VAL_NOTE}


def selection_for(holdout: SplitIndex, val: SplitIndex, prep: Preprocessing) -> Selection:
    if len(holdout):
        return Selection("holdout", holdout, prep.test_res, prep.crop_pct)
    return Selection("val", val, prep.test_res, prep.crop_pct)


def evaluate_epoch(models: dict[str, nn.Module], val: SplitIndex, selection: Selection, prep: Preprocessing,
                   rt: Runtime, note_skipped) -> dict:
    """``row`` entries of one evaluation: ``val_*`` of each model (prefixed ``ema_`` for the EMA)
    and, when the selection split is not val, its ``holdout_*`` figures. ``note_skipped(split,
    items)`` records the files that could not be read."""
    row = {}
    for name, model in models.items():
        prefix = "" if name == "model" else f"{name}_"
        average_batchnorm_buffers(model, rt.dist)            # every rank evaluates the same model
        result, skipped = evaluate(model, val, prep, rt, label=f"{prefix}eval@{prep.test_res}")
        note_skipped("val", skipped)
        row.update({f"{prefix}val_{k}": v for k, v in result.row().items()})
        if selection.split != "val":
            held, skipped = evaluate(model, selection.index, prep, rt, label=f"{prefix}holdout@{prep.test_res}")
            note_skipped("train", skipped)
            row.update({f"{prefix}{selection.split}_{k}": v for k, v in held.row().items()})
    return row


def score(row: dict, selection: Selection, weights: str) -> float:
    """The selection metric of ``weights`` ("model" or "ema") in an evaluated row."""
    prefix = "" if weights == "model" else f"{weights}_"
    return row[f"{prefix}{selection.split}_top1"]


BEST_LINK = {"model": "best", "ema": "best-ema"}


def better_links(best: dict, row: dict, selection: Selection, models, epoch: int) -> tuple[str, ...]:
    """The best links (``best``, ``best-ema``) that the epoch ``row`` now deserves, updating
    ``best`` (weights -> (score, epoch)) where it beats the best so far."""
    links = []
    for weights in models:
        value = score(row, selection, weights)
        if value > best[weights][0]:
            best[weights] = (value, epoch)
            links.append(BEST_LINK[weights])
    return tuple(links)
