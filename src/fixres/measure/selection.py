"""Which images choose a sweep's best resolution, and the geometric prediction it is compared with.

By default the training images a checkpoint held out (``fixres train --holdout``), else a
sample of the training split, never the reported split: choosing on val and reporting val is
optimistic, which the selection's note says when asked for.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..analyze import predict_test_res
from ..core.errors import FixresError
from ..data.index import SplitIndex, sample_per_class
from ..data.preprocessing import Preprocessing
from ..models.checkpoint import CheckpointMeta
from ..models.labels import Binding
from .infer import load_split

SELECT_ON = ("holdout", "train", "val", "none")


@dataclass(frozen=True)
class Selection:
    """The images that choose the best resolution."""

    split: str | None              # "holdout", "train", "val" (the reported split) or None
    index: SplitIndex | None
    seen_in_training: bool
    note: str


def select_split(meta: CheckpointMeta, data: str | Path, select_on: str | None, *, split: str = "val",
                 select_images: int = 50, labels: Binding | None = None) -> Selection:
    """Which images choose the best resolution (default: the held-out ones, else a train sample).

    ``labels``: how the dataset's folders map onto the model's classes (default: by name)."""
    if select_on is None:
        select_on = "holdout" if meta.holdout else "train"
    if select_on not in SELECT_ON:
        raise FixresError(f"--select-on must be one of {', '.join(SELECT_ON)}, got {select_on!r}")
    if select_on == "none":
        return Selection(None, None, False, "no selection requested")
    if select_on == split or select_on == "val":
        return Selection(split, None, False, f"chosen on {split}, the split it is reported on: the {split} accuracy "
                                             "at the chosen resolution is optimistic")
    if not (Path(data) / "train").is_dir():
        raise FixresError(f"{data} has no train/ directory to choose the test resolution on without touching "
                          f"{split}: add one, or use --select-on val (optimistic) or none")
    train = load_split(data, "train", labels if labels is not None else meta.class_names)
    if select_on == "holdout":
        if meta.weights_from is not None:
            raise FixresError(f"--select-on holdout: {meta.model} was not trained by fixres, so no image of "
                              f"{Path(data) / 'train'} is known to be held out of its training; use --select-on train "
                              "(a sample of train/), val (optimistic) or none")
        if not meta.holdout:
            raise FixresError("the checkpoint records no held-out training images (train with --holdout); "
                              "use --select-on train, val or none")
        held = meta.split_training_images(train)[1]
        return Selection("holdout", held, False,
                         f"chosen on {len(held)} training images held out of training "
                         f"(fraction {meta.holdout['fraction']:g}, seed {meta.holdout['seed']})")
    if select_images < 1:
        raise FixresError(f"--select-images must be at least 1, got {select_images}")
    if meta.holdout:     # sample only what was trained on, so "seen in training" is true of every image
        train = meta.split_training_images(train)[0]
    sample = sample_per_class(train, select_images)
    if meta.weights_from is not None:    # a model fixres did not train: its training set is not this train/
        return Selection("train", sample, False, f"chosen on {len(sample)} images of {Path(data) / 'train'} (at most "
                                                 f"{select_images} per class), not on {split}")
    why = ("the held-out images were not used (--select-on train)" if meta.holdout
           else "no held-out images recorded (train with --holdout to avoid this)")
    return Selection("train", sample, True, f"chosen on {len(sample)} TRAINING images (at most {select_images} per "
                                            f"class) that the model was trained on: {why}")


# ----------------------------------------------------------------------------- results
def predicted_test_res(prep: Preprocessing, crop_pct: float, index: SplitIndex, index_name: str) -> dict:
    """The geometric (apparent-object-size) prediction of :mod:`fixres.analyze` for the training
    crop settings ``prep`` records, a Monte-Carlo of the exact sampler over the image sizes of
    ``index``; or why there is none."""
    sizes = [(s.width, s.height) for s in index.samples]
    try:
        p = predict_test_res(prep.train_res, scale=prep.scale, ratio=prep.ratio, crop_pct=crop_pct,
                             sizes=sizes or None, source=f"{len(sizes)} {index_name} image sizes")
    except FixresError as e:
        return {"test_res": None, "note": f"no geometric prediction: {e}"}
    return {"test_res": p.test_res, "statistic": p.statistic, "scale": list(prep.scale), "ratio": list(prep.ratio),
            "crop_pct": crop_pct, "rrc_settings_from": prep.source_of("scale"), "sizes": p.source,
            "note": "geometric prediction (apparent object size), not a measurement"}


def prediction(prep: Preprocessing, meta: CheckpointMeta, crop_pct: float, index: SplitIndex,
               index_name: str) -> dict:
    """:func:`predicted_test_res`, and for a progressive-resizing run the note that the prediction
    is made for the FINAL training resolution (the one ``prep.train_res`` records)."""
    predicted = predicted_test_res(prep, crop_pct, index, index_name)
    if meta.weights_from is not None and predicted.get("test_res"):
        predicted = {**predicted, "train_res_from": prep.source_of("train_res"),
                     "note": f"{predicted['note']}; made for the train resolution {prep.train_res}px that "
                             f"{prep.source_of('train_res')} declares (the weights do not record theirs)"}
    schedule = (meta.recipe or {}).get("train_res_schedule")
    if schedule and predicted.get("test_res"):
        predicted = {**predicted, "train_res_schedule": schedule,
                     "note": f"{predicted['note']}; made for the FINAL training resolution {prep.train_res} of a "
                             f"progressive schedule ({schedule['start']} -> {schedule['end']} px)"}
    return predicted
