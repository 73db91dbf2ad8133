"""Why adaptation is needed: the classifier's input against test resolution (paper figure 3).

The classifier of a CNN sees the *pooled features*: the last activations after the ReLU,
averaged over the image. It was trained on their distribution under the TRAIN
preprocessing (RandomResizedCrop at ``train_res``). Tested with the centre-crop
preprocessing at a higher resolution, the same images give pooled features with fewer
exact zeros and larger values (METHOD.md sections 1 and 3). This module measures that
distribution, per test resolution, against the train-time one, for one checkpoint and
optionally for adapted ones (``compare``), so before/after adaptation is on one figure.

What is measured (every number comes from one decoding pass over a deterministic,
class-balanced sample of ``split``):

* the **reference**: the pooled features of the first checkpoint with its train
  preprocessing (RandomResizedCrop at its ``train_res`` with the run's scale, ratio, flip
  and jitter, each image's crop seeded by ``(seed, image)``), on the same images unless
  ``reference_split`` names another split;
* one row per checkpoint and test resolution: the test preprocessing of ``fixres eval``.

Features are read by :func:`fixres.models.pooled.pooled_features`, i.e. *before* the equaliser of
a ``parametric``-adapted checkpoint; for such a checkpoint a second series, ``equalised``
(the equaliser's map applied to them), is what its classifier actually receives.
Distances of every row are to the reference of the FIRST checkpoint: the distribution its
classifier was trained on. Computation is float32 (no autocast). The figures are drawn by
:mod:`fixres.measure.stats_plots`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..core.errors import FixresError
from ..core.options import option
from ..core.runtime import Runtime, RuntimeOptions
from ..data.index import SplitIndex, balanced_sample, split_holdout
from ..data.loader import MultiView
from ..data.pipeline import ordered_batches
from ..data.transforms import EvalTransform, check_geometries, resolutions
from ..models.checkpoint import CheckpointMeta
from ..models.equaliser import Equaliser
from ..models.heads import find_classifier
from ..models.labels import Binding
from ..models.pooled import pooled_features
from ..models.sizes import check_input_size
from ..models.sources import ModelSource, Opened, open_for_data, open_model
from .infer import load_split

ZEROS = "fraction of values exactly 0.0 (float32; a channel that is zero at every position)"
DISTANCES = ("w1: 1-D Wasserstein distance between all feature values and the train-time ones (feature units); "
             "ks: Kolmogorov-Smirnov statistic (max CDF gap); channel_shift: mean over channels of "
             "|channel mean - train-time channel mean| / train-time channel std (constant channels excluded)")
STATS_FILES = ("stats.csv", "stats.json", "stats-cdf.png", "stats-vs-res.png")


# ----------------------------------------------------------------------------- statistics
def wasserstein1(a: np.ndarray, b: np.ndarray) -> float:
    """Exact W1 between the empirical laws of ``a`` and ``b``: the integral of |F_a - F_b|."""
    a, b = np.sort(np.ravel(a)), np.sort(np.ravel(b))
    x = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(a, x[:-1], side="right") / a.size
    fb = np.searchsorted(b, x[:-1], side="right") / b.size
    return float(np.sum(np.abs(fa - fb) * np.diff(x)))


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Largest gap between the two empirical (right-continuous) CDFs."""
    a, b = np.sort(np.ravel(a)), np.sort(np.ravel(b))
    x = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, x, side="right") / a.size
                               - np.searchsorted(b, x, side="right") / b.size)))


def channel_shift(x: np.ndarray, ref: np.ndarray) -> tuple[float, int]:
    """Mean over channels of ``|mean_c(x) - mean_c(ref)| / std_c(ref)``; channels constant in
    ``ref`` (std 0) are left out. Returns ``(shift, channels used)``."""
    sd = ref.std(axis=0)
    used = sd > 0
    if not used.any():
        return float("nan"), 0
    return float(np.mean(np.abs(x.mean(axis=0) - ref.mean(axis=0))[used] / sd[used])), int(used.sum())


def describe(x: np.ndarray, ref: np.ndarray) -> dict:
    """Statistics of features ``x`` (images x channels) and their distances to ``ref`` (images x channels)."""
    x, ref = np.asarray(x, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    values = x.ravel()
    return {"zeros": float(np.mean(values == 0)), "mean": float(values.mean()), "std": float(values.std()),
            "median": float(np.median(values)), "p99": float(np.quantile(values, 0.99)), "max": float(values.max()),
            "w1": wasserstein1(values, ref), "ks": ks_statistic(values, ref),
            "channel_shift": channel_shift(x, ref)[0]}


# ----------------------------------------------------------------------------- inputs
@dataclass
class Probe:
    """One checkpoint opened for reading its pooled features."""

    label: str
    directory: str             # the checkpoint directory, or the --model name
    model: nn.Module
    meta: CheckpointMeta
    classifier: str
    equaliser: Equaliser | None

    @property
    def adapted(self) -> str | None:
        return (self.meta.adaptation or {}).get("method")

    @property
    def adapted_res(self) -> int | None:
        return (self.meta.adaptation or {}).get("test_res")

    @property
    def series(self) -> tuple[str, ...]:
        return ("pooled", "equalised") if self.equaliser else ("pooled",)


def open_probe(opened: Opened) -> Probe:
    model, meta = opened.model, opened.meta
    record = (meta.adaptation or {}).get("equaliser")
    classifier = record["module"] if record else find_classifier(model)
    adaptation = meta.adaptation or {}
    label = f"{adaptation['method']}@{adaptation.get('test_res')}" if adaptation else "as trained"
    return Probe(label, opened.name, model, meta, classifier, Equaliser.from_record(record) if record else None)


def feature_map(model: nn.Module, res: int) -> str | None:
    """``"HxW"`` of the map that is pooled at ``res`` (timm's ``forward_features``), None if not 4-D."""
    param = next(model.parameters())
    try:
        with torch.no_grad():
            out = model.forward_features(torch.zeros(1, 3, res, res, device=param.device, dtype=param.dtype))
    except (AttributeError, RuntimeError, TypeError):
        return None
    return f"{out.shape[-2]}x{out.shape[-1]}" if isinstance(out, torch.Tensor) and out.ndim == 4 else None


def features(model: nn.Module, images: torch.Tensor, classifier: str) -> torch.Tensor:
    """Pooled features ``(N, C)`` as float32 on the CPU, or a one-line error for an unsuitable model."""
    try:
        return pooled_features(model, images, classifier=classifier).float().cpu()
    except IndexError:
        raise FixresError(f"the classifier {classifier!r} was not called by the model's forward: "
                          "cannot read its input") from None


@torch.no_grad()
def collect(probes: Sequence[Probe], index: SplitIndex, views: Sequence, rt: Runtime, *, seed: int = 0,
            batch_size: int = 50, label: str = "features") -> tuple[list[list[torch.Tensor]], list]:
    """Raw pooled features of every probe for every view, decoding each image once.

    Returns ``(feats, skipped)``: ``feats[p][v]`` is ``(n, C)`` for probe ``p`` and view ``v``
    (the decodable images of ``index``, in index order) and ``skipped`` the ``(path, reason)``
    of the images that could not be decoded.
    """
    loader = ordered_batches(index, MultiView(tuple(views)), rt, batch_size=batch_size, seed=seed)
    rows = [[[] for _ in views] for _ in probes]
    skipped = list(index.skipped)
    for batch in rt.progress(loader, label):
        skipped.extend(batch.skipped)
        if batch.images is None:
            continue
        for p, probe in enumerate(probes):
            normalize = probe.meta.preprocessing.normalizer()
            for v, images in enumerate(batch.images):
                rows[p][v].append(features(probe.model, normalize(images, rt.device), probe.classifier))
    if not rows[0][0]:
        raise FixresError(f"no image of {index.root} could be decoded")
    return [[torch.cat(r) for r in per_probe] for per_probe in rows], skipped


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class StatsRow:
    label: str
    checkpoint: str
    model: str
    adapted: str | None
    adapted_res: int | None  # the resolution the checkpoint was adapted to
    features: str            # "pooled" (read before any equaliser) or "equalised" (what the classifier gets)
    preprocessing: str       # "test" (resize + centre crop) or "train" (RandomResizedCrop, the reference)
    resolution: int
    resize_size: int | None
    crop_pct: float | None
    split: str
    n: int
    channels: int
    feature_map: str | None   # "HxW" positions averaged by the pooling (None: not a 2-D map)
    zeros: float
    mean: float
    std: float
    median: float
    p99: float
    max: float
    w1: float
    ks: float
    channel_shift: float

    def row(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StatsResult:
    rows: tuple[StatsRow, ...]          # the reference row first, then per checkpoint, series, resolution
    reference: dict                      # how the train-time distribution was made
    sample: dict                         # which images
    findings: tuple[str, ...]            # derived sentences (also in the table)
    notes: tuple[str, ...]
    skipped: tuple = ()
    device: str = ""
    values: dict | None = None           # (label, features, preprocessing, resolution) -> all values (plots)


def _findings(rows: Sequence[StatsRow], probes: Sequence[Probe]) -> list[str]:
    ref, first = rows[0], [r for r in rows[1:] if r.label == probes[0].label and r.features == "pooled"]
    lo, hi = first[0], first[-1]
    out = [f"{probes[0].label}: zeros {100 * ref.zeros:.1f}% and mean {ref.mean:.4f} at train time; "
           f"test {lo.resolution}px: {100 * lo.zeros:.1f}%, {lo.mean:.4f}; test {hi.resolution}px: "
           f"{100 * hi.zeros:.1f}%, {hi.mean:.4f}"]
    for probe in probes[1:]:
        k = probe.adapted_res
        before = next((r for r in first if r.resolution == k), None)
        series = [r for r in rows if r.label == probe.label and r.resolution == k]
        after = next((r for r in series if r.features == "equalised"), series[0] if series else None)
        if before is None or after is None:
            continue
        closer = [m for m in ("w1", "ks", "channel_shift") if getattr(after, m) < getattr(before, m)]
        further = [m for m in ("w1", "ks", "channel_shift") if m not in closer]
        verdict = "; ".join(f"{word} the train-time distribution by {', '.join(ms)}"
                            for word, ms in (("closer to", closer), ("further from", further)) if ms)
        out.append(f"{probe.label} at {k}px ({after.features}) vs {first[0].label}: w1 {before.w1:.4f} -> "
                   f"{after.w1:.4f}, ks {before.ks:.3f} -> {after.ks:.3f}, shift {before.channel_shift:.3f} -> "
                   f"{after.channel_shift:.3f}, zeros {100 * before.zeros:.1f}% -> {100 * after.zeros:.1f}%: {verdict}")
    return out


# ----------------------------------------------------------------------------- entry point
@dataclass(frozen=True, kw_only=True)
class StatsOptions(RuntimeOptions):
    test_res: tuple[int, ...] = option(help="test resolutions: values and/or START:END:STEP ranges, END included "
                                            "(e.g. 32:128:16)", parse=resolutions, type=str, metavar="RES")
    split: str = option("val", "sub-directory the images come from")
    images: int = option(500, "images of --split: a class-balanced sample fixed by --seed, all if fewer")
    reference_split: Optional[str] = option(None, "images of the train-time reference (default: the same images; "
                                                  "`train` samples the images the checkpoint was trained on)")
    seed: int = option(0, "seed of the sample and of the RandomResizedCrop draws")
    batch_size: int = option(50, "images per batch")

    def __post_init__(self):
        super().__post_init__()
        check_geometries(self.test_res, [0.875])
        if self.images < 1:
            raise FixresError(f"images must be at least 1, got {self.images}")


def feature_width(model: nn.Module) -> int | None:
    """The number of pooled features the classifier reads (timm's ``num_features``)."""
    width = getattr(model, "num_features", None)
    return int(width) if width else getattr(model.get_classifier(), "in_features", None)


def feature_stats(checkpoint: "str | Path | ModelSource", data: str | Path, opts: StatsOptions, *,
                  compare: Sequence[str | Path] = (), quiet: bool = True) -> StatsResult:
    """Distribution of the pooled features at each test resolution against the train-time one.

    Args:
        checkpoint: a checkpoint path or any :class:`~fixres.models.sources.ModelSource` (its
            train-time distribution is the reference: RandomResizedCrop with the crop settings
            its preprocessing record holds; for a model fixres did not train, the defaults).
        data: dataset directory holding ``opts.split`` (and ``opts.reference_split``).
        opts: :class:`StatsOptions` (its ``test_res`` is required).
        compare: further checkpoints (e.g. ``fixres adapt`` outputs) measured on the same images.
    """
    test_res = list(opts.test_res)      # sorted and unique (its parse hook)
    first = open_for_data(checkpoint, data, [opts.split, opts.reference_split or opts.split])
    probes = [open_probe(first), *(open_probe(open_model(c)) for c in compare)]
    for i, probe in enumerate(probes):     # labels name the series: make them unique
        if any(p.label == probe.label for p in probes[:i]):
            probe.label = f"{probe.label} #{i + 1}"
    base = probes[0].meta
    width = feature_width(probes[0].model)
    for probe in probes[1:]:
        if probe.meta.class_names != base.class_names:
            raise FixresError(f"--compare {probe.directory}: its classes differ from {probes[0].directory}'s")
        if feature_width(probe.model) != width:
            raise FixresError(f"--compare {probe.directory}: its pooled features have {feature_width(probe.model)} "
                              f"channels, {probes[0].directory}'s {width}: the distances are to the first model's "
                              "train-time features, so compare checkpoints of one architecture (run fixres stats on "
                              "each model)")
    check_input_size(first.model, [*test_res, first.meta.preprocessing.train_res])
    index = balanced_sample(load_split(data, opts.split, first.binding), opts.images, opts.seed)
    prep = base.preprocessing
    rrc = prep.train_view()
    ref_split = opts.reference_split or opts.split
    rt = opts.runtime(quiet=quiet)
    for probe in probes:
        probe.model.to(rt.device)
    views = [prep.test_view(k) for k in test_res]
    common = dict(seed=opts.seed, batch_size=opts.batch_size)
    if ref_split == opts.split:
        feats, skipped = collect(probes, index, [rrc, *views], rt, label=f"features x{len(views) + 1}", **common)
        reference = feats[0][0].numpy()
        feats = [f[1:] for f in feats]
        ref_index = index
    else:
        ref_index = _reference_images(data, ref_split, base, first.binding, opts.images, opts.seed)
        reference = collect(probes[:1], ref_index, [rrc], rt, label="reference features", **common)[0][0][0].numpy()
        feats, skipped = collect(probes, index, views, rt, label=f"features x{len(views)}", **common)
    rows, values, notes = _rows(probes, views, feats, reference, opts.split, ref_split)
    ref_info = {"checkpoint": str(probes[0].directory), "split": ref_split, "images": f"{len(ref_index)} {ref_split} "
                f"images" + (" (the same as the rows)" if ref_split == opts.split else ""), "seed": opts.seed,
                "preprocessing": f"RandomResizedCrop({rrc.size}, scale {rrc.scale[0]:g}-{rrc.scale[1]:g}, ratio "
                f"{rrc.ratio[0]:.3g}-{rrc.ratio[1]:.3g}) + flip {rrc.hflip:g}"
                + (f" + jitter {rrc.color_jitter:g}" if rrc.color_jitter else ""),
                "settings_from": prep.source_of("scale")}
    sample = {"split": opts.split, "images": len(index), "requested": opts.images, "seed": opts.seed,
              "per_class": "balanced", "skipped": len(skipped)}
    return StatsResult(tuple(rows), ref_info, sample, tuple(_findings(rows, probes)), tuple(notes), tuple(skipped),
                       str(rt.device), values)


def _rows(probes: Sequence[Probe], views: Sequence[EvalTransform], feats, reference: np.ndarray, split: str,
          ref_split: str) -> tuple[list[StatsRow], dict, list[str]]:
    """The reference row, then one row per probe, series and view; the sorted values; notes."""
    first, notes = probes[0], []

    def row(probe, series, prep, res, resize, pct, where, x):
        return StatsRow(probe.label, str(probe.directory), probe.meta.model, probe.adapted, probe.adapted_res, series,
                        prep, res, resize, pct, where, len(x), x.shape[1], feature_map(probe.model, res),
                        **describe(x, reference))

    rows = [row(first, "pooled", "train", first.meta.preprocessing.train_res, None, None, ref_split, reference)]
    values = {(first.label, "pooled", "train", first.meta.preprocessing.train_res): np.sort(reference.ravel())}
    for probe, per_view in zip(probes, feats):
        if (probe.meta.model, probe.meta.preprocessing.train_res) != (first.meta.model, first.meta.preprocessing.train_res):
            notes.append(f"{probe.label} is a {probe.meta.model} trained at {probe.meta.preprocessing.train_res}px: its distances "
                         f"are still to {first.label}'s train-time distribution")
        if probe.adapted_res is not None and probe.adapted_res not in [v.test_res for v in views]:
            notes.append(f"{probe.label}: its adapted resolution {probe.adapted_res}px is not among --test-res")
        for series in probe.series:
            for view, x in zip(views, per_view):
                x = (probe.equaliser.map(x) if series == "equalised" else x).numpy()
                if x.min() < 0 and series == "pooled" and not any(probe.label in s for s in notes):
                    notes.append(f"{probe.label}: pooled features take negative values (min {x.min():.3g}): "
                                 "not a post-ReLU average, the zero fraction means little")
                rows.append(row(probe, series, "test", view.test_res, view.resize_size, view.crop_pct, split, x))
                values[(probe.label, series, "test", view.test_res)] = np.sort(x.ravel())
    constant = reference.shape[1] - channel_shift(reference, reference)[1]
    if constant:
        notes.append(f"{constant} of {reference.shape[1]} channels are constant (always 0) at train time: "
                     "left out of the channel shift")
    return rows, values, notes


def _reference_images(data, split: str, meta: CheckpointMeta, labels: Binding, images: int, seed: int) -> SplitIndex:
    index = load_split(data, split, labels)
    if split == "train" and meta.holdout:    # only what the classifier was trained on
        index = split_holdout(index, float(meta.holdout["fraction"]), int(meta.holdout["seed"]))[0]
    return balanced_sample(index, images, seed)
