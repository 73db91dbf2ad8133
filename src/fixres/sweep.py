"""Accuracy against test resolution, in one pass over the data.

Every image is decoded once and turned into one uint8 tensor per geometry
``(test_res, crop_pct)`` by the same :class:`~fixres.data.transforms.EvalTransform` that
``fixres eval`` uses; a batch holds one stacked tensor per geometry, the model runs once
per geometry, and one device-side :class:`~fixres.evaluate.Tally` per geometry sums the
metrics. With the same batch size each geometry sees exactly the batches ``evaluate``
would see, so a sweep row equals ``fixres eval`` at that geometry.

The best resolution is chosen on images that are not the reported split: the training
images held out by ``fixres train --holdout`` when the checkpoint records them, otherwise
a deterministic sample of the training split (seen in training, and said so).

Memory: the model runs on one geometry at a time, so device memory is that of
``fixres eval`` at the largest resolution with the same batch size. On the host, a batch
holds ``batch_size * 3 * sum(test_res**2)`` bytes; the loader keeps fewer batches in
flight when that exceeds ``fixres.data.loader.HOST_BUDGET_MB`` (see :func:`sweep_loader`).

The text table, JSON record and output files of a :class:`SweepResult` are made by
:mod:`fixres.sweep_report`.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import CheckpointMeta, find_checkpoint, open_checkpoint
from .data.folder import SplitIndex, split_holdout
from .data.loader import Batch, EvalShard, ImageDataset, make_loader
from .data.transforms import EvalTransform, check_crop_pct, check_resolution
from .errors import FixresError
from .evaluate import EvalResult, Preprocess, Tally, infer, load_split
from .progress import iterate
from .runtime import Dist, autocast_dtype, resolve_device
from .sweep_report import SWEEP_FILES, check_out_dir, sweep_json, sweep_table, write_sweep  # noqa: F401 (re-exported)

SELECT_ON = ("holdout", "train", "val", "none")
MAX_GEOMETRIES = 64


# ----------------------------------------------------------------------------- input
def parse_resolutions(values: Sequence[str | int]) -> list[int]:
    """Resolutions from ``["32", "48"]`` or ranges ``["32:128:16"]`` (end included), sorted, unique.

    Raises:
        FixresError: malformed item, empty or descending range, a resolution outside
            [8, 4096] px, or more than ``MAX_GEOMETRIES`` values.
    """
    out: set[int] = set()
    for value in values:
        text = str(value).strip()
        parts = text.split(":")
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise FixresError(f"test resolution {text!r} is not an integer or a START:END:STEP range") from None
        if len(numbers) == 1:
            out.add(check_resolution(numbers[0], "test resolution"))
            continue
        if len(numbers) != 3:
            raise FixresError(f"test resolution range {text!r} must be START:END:STEP (e.g. 32:128:16)")
        start, end, step = numbers
        if step <= 0 or start > end:
            raise FixresError(f"test resolution range {text!r} needs START <= END and STEP > 0")
        check_resolution(start, "test resolution")
        check_resolution(end, "test resolution")
        if (end - start) // step + 1 > MAX_GEOMETRIES:
            raise FixresError(f"test resolution range {text!r} has more than {MAX_GEOMETRIES} values")
        out.update(range(start, end + 1, step))
    if not out:
        raise FixresError("no test resolution given")
    if len(out) > MAX_GEOMETRIES:
        raise FixresError(f"{len(out)} test resolutions: at most {MAX_GEOMETRIES} per sweep")
    return sorted(out)


def check_geometries(test_res: Sequence[int], crop_pcts: Sequence[float]) -> list[tuple[int, float]]:
    """Every ``(test_res, crop_pct)`` pair, validated, crop_pct-major."""
    for r in test_res:
        check_resolution(r, "test resolution")
    pcts = list(dict.fromkeys(check_crop_pct(c) for c in crop_pcts))
    geometries = [(r, c) for c in pcts for r in test_res]
    if not geometries:
        raise FixresError("no test geometry to sweep")
    if len(geometries) > MAX_GEOMETRIES:
        raise FixresError(f"{len(geometries)} geometries (resolutions x crop_pcts): at most {MAX_GEOMETRIES} per sweep")
    return geometries


# ----------------------------------------------------------------------------- one pass
@dataclass(frozen=True)
class GeometryTransforms:
    """One decoded image -> one uint8 CHW tensor per geometry (the image is decoded once)."""

    transforms: tuple[EvalTransform, ...]

    def __call__(self, img, generator=None) -> tuple[torch.Tensor, ...]:
        return tuple(t(img) for t in self.transforms)   # resizing a PIL image never modifies it


def batch_bytes(batch_size: int, geometries: Sequence[tuple[int, float]]) -> int:
    """Host bytes of one batch: every geometry's uint8 crops."""
    return batch_size * 3 * sum(r * r for r, _ in geometries)


def sweep_loader(split: SplitIndex, transforms: tuple[EvalTransform, ...], *, batch_size: int, workers: int | None,
                 dist_env: Dist, pin_memory: bool) -> DataLoader:
    """A loader over this rank's :class:`EvalShard` of ``split`` whose batches hold one uint8
    stack per geometry (``Batch.images`` is a tuple); fewer batches are prefetched when they
    are large (see :func:`~fixres.data.loader.make_loader`)."""
    dataset = ImageDataset(split, GeometryTransforms(transforms))
    return make_loader(dataset, sampler=EvalShard(len(dataset), dist_env.rank, dist_env.world), batch_size=batch_size,
                       workers=workers, pin_memory=pin_memory,
                       batch_bytes=batch_bytes(batch_size, [(t.test_res, t.crop_pct) for t in transforms]))


def _per_geometry(batches, n: int):
    """Flatten each multi-geometry :class:`Batch` into ``n`` plain ones, geometry order."""
    for batch in batches:
        for g in range(n):
            yield Batch(None if batch.images is None else batch.images[g], batch.labels, batch.indices, batch.skipped)


@torch.no_grad()
def sweep_model(model: nn.Module, split_index: SplitIndex, *, geometries: Sequence[tuple[int, float]],
                interpolation: str, preprocess: Preprocess, device: torch.device, batch_size: int = 100,
                workers: int | None = None, amp_dtype: torch.dtype | None = None, dist_env: Dist = Dist(),
                progress=None, skipped: list | None = None) -> list[EvalResult]:
    """Evaluate ``model`` on ``split_index`` at every geometry in one pass over the images.

    Args:
        geometries: ``(test_res, crop_pct)`` pairs.
        progress: optional wrapper of the batch iterable (a progress bar).
        skipped: if given, extended with the ``(path, reason)`` of files that could not be read.

    Returns:
        One :class:`EvalResult` per geometry, in the order given; each equals
        :func:`fixres.evaluate.evaluate` at that geometry with the same batch size.
    """
    transforms = tuple(EvalTransform(r, c, interpolation) for r, c in geometries)
    if not transforms:
        raise FixresError("no test geometry to sweep")
    # The data pipeline for the device (fixres.data.pipeline; auto: the fast path on CUDA,
    # sweep_loader below on the CPU): one decode per image for every geometry either way.
    from .data.pipeline import sweep_batches
    loader = sweep_batches(split_index, geometries, interpolation, device=device, batch_size=batch_size,
                           workers=workers, dist_env=dist_env)
    tallies = [Tally(device) for _ in transforms]
    if dist_env.is_main:     # files refused when scanned count once, on one rank
        for tally in tallies:
            tally.add(None, torch.zeros(0, dtype=torch.long), len(split_index.skipped))
        if skipped is not None:
            skipped.extend(split_index.skipped)
    n = len(transforms)
    batches = progress(loader) if progress else loader
    for i, (logits, batch) in enumerate(infer(model, _per_geometry(batches, n), device, preprocess, amp_dtype)):
        g = i % n
        tallies[g].add(logits, batch.labels, len(batch.skipped))
        if g == 0 and skipped is not None:
            skipped.extend(batch.skipped)
    return [tally.result(dist_env, test_res=t.test_res, crop_pct=t.crop_pct, interpolation=interpolation)
            for tally, t in zip(tallies, transforms)]


# ----------------------------------------------------------------------------- selection
@dataclass(frozen=True)
class Selection:
    """The images that choose the best resolution."""

    split: str | None              # "holdout", "train", "val" (the reported split) or None
    index: SplitIndex | None
    seen_in_training: bool
    note: str


def sample_per_class(index: SplitIndex, per_class: int, seed: int = 0) -> SplitIndex:
    """At most ``per_class`` images of each class, a pure function of the paths and ``seed``."""
    ranked = sorted(index.samples, key=lambda s: hashlib.sha256(f"{seed}:{s.path}".encode()).digest())
    taken: dict[int, int] = {}
    keep = set()
    for s in ranked:
        if taken.get(s.label, 0) < per_class:
            taken[s.label] = taken.get(s.label, 0) + 1
            keep.add(s.path)
    return SplitIndex(index.root, index.classes, [s for s in index.samples if s.path in keep], [])


def select_split(meta: CheckpointMeta, data: str | Path, select_on: str | None, *, split: str = "val",
                 select_images: int = 50) -> Selection:
    """Which images choose the best resolution (default: the held-out ones, else a train sample)."""
    if select_on is None:
        select_on = "holdout" if meta.holdout else "train"
    if select_on not in SELECT_ON:
        raise FixresError(f"--select-on must be one of {', '.join(SELECT_ON)}, got {select_on!r}")
    if select_on == "none":
        return Selection(None, None, False, "no selection requested")
    if select_on == split or select_on == "val":
        return Selection(split, None, False, f"chosen on {split}, the split it is reported on: the {split} accuracy "
                                             "at the chosen resolution is optimistic")
    train = load_split(data, "train", meta.class_names)
    if select_on == "holdout":
        if not meta.holdout:
            raise FixresError("the checkpoint records no held-out training images (train with --holdout); "
                              "use --select-on train, val or none")
        recorded = meta.data_digest.split("-")[0]
        if recorded and recorded != train.digest():
            raise FixresError(f"{Path(data) / 'train'} is not the training split the checkpoint was trained on "
                              "(index digest differs): its held-out images cannot be rebuilt")
        held = split_holdout(train, meta.holdout["fraction"], meta.holdout["seed"])[1]
        return Selection("holdout", held, False,
                         f"chosen on {len(held)} training images held out of training "
                         f"(fraction {meta.holdout['fraction']:g}, seed {meta.holdout['seed']})")
    if select_images < 1:
        raise FixresError(f"--select-images must be at least 1, got {select_images}")
    if meta.holdout:     # sample only what was trained on, so "seen in training" is true of every image
        train = split_holdout(train, meta.holdout["fraction"], meta.holdout["seed"])[0]
    sample = sample_per_class(train, select_images)
    why = ("the held-out images were not used (--select-on train)" if meta.holdout
           else "no held-out images recorded (train with --holdout to avoid this)")
    return Selection("train", sample, True, f"chosen on {len(sample)} TRAINING images (at most {select_images} per "
                                            f"class) that the model was trained on: {why}")


def choose_best(rows: Sequence["SweepRow"]) -> "SweepRow":
    """Highest top-1; ties go to the lower loss, then the lower (cheaper) resolution."""
    return max(rows, key=lambda r: (r.top1, -r.loss, -r.test_res))


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class SweepRow:
    checkpoint: str
    model: str
    train_res: int
    test_res: int
    crop_pct: float
    resize_size: int
    interpolation: str
    split: str
    top1: float
    top5: float
    loss: float
    n: int
    n_skipped: int
    adapted: str | None

    def row(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SweepResult:
    rows: tuple[SweepRow, ...]                 # the reported split (val)
    selection_rows: tuple[SweepRow, ...]       # the split that chose (empty when none; == rows when val)
    best: tuple[int, float] | None             # (test_res, crop_pct) chosen
    chosen_on: str | None                      # split that chose it
    selection: Selection
    predicted: dict = field(default_factory=dict)   # {"test_res", ...} or {"note"} when unavailable
    skipped: tuple = ()
    device: str = ""

    @property
    def train_res(self) -> int:
        return self.rows[0].train_res

    @property
    def selected_on_report(self) -> bool:
        """True when the best was chosen on the reported split itself (``select_on="val"``)."""
        return self.chosen_on == self.rows[0].split

    def best_row(self) -> SweepRow | None:
        """The reported split's row at the chosen geometry."""
        return next((r for r in self.rows if (r.test_res, r.crop_pct) == self.best), None)

    def to_json(self) -> dict:
        """Everything the sweep measured and what produced it (see :func:`~fixres.sweep_report.sweep_json`)."""
        return sweep_json(self)

    def table(self) -> str:
        """A plain-text report (see :func:`~fixres.sweep_report.sweep_table`)."""
        return sweep_table(self)

    def write(self, out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
        """Write ``sweep.csv``, ``sweep.json`` and ``sweep.png`` into ``out_dir`` (refusing to replace them)."""
        return write_sweep(self, out_dir, overwrite=overwrite)


def to_rows(results: Sequence[EvalResult], *, checkpoint: str, meta: CheckpointMeta, split: str) -> tuple[SweepRow, ...]:
    adapted = (meta.adaptation or {}).get("method")
    return tuple(SweepRow(checkpoint, meta.model, meta.train_res, r.test_res, r.crop_pct,
                          EvalTransform(r.test_res, r.crop_pct).resize_size, r.interpolation, split, r.top1, r.top5,
                          r.loss, r.n, r.n_skipped, adapted) for r in results)


def sweep_checkpoint(checkpoint: str | Path, data: str | Path, *, test_res: Sequence[int],
                     crop_pcts: Sequence[float] | None = None, select_on: str | None = None, split: str = "val",
                     select_images: int = 50, interpolation: str | None = None, batch_size: int = 100,
                     workers: int | None = None, device: str = "auto", amp: str = "auto", dist_env: Dist = Dist(),
                     quiet: bool = True) -> SweepResult:
    """Sweep a checkpoint over test geometries on ``data/split``, choosing the best elsewhere.

    Args:
        test_res: resolutions (see :func:`parse_resolutions` for ranges).
        crop_pcts: centre-crop fractions (default: the checkpoint's).
        select_on: "holdout", "train", "val" or "none" (default: holdout if recorded, else train).
        select_images: images per class of the train sample (``select_on="train"``).
        dist_env: the process group (under torchrun every rank calls this; results are all-reduced).
    """
    if batch_size < 1:
        raise FixresError(f"batch size must be at least 1, got {batch_size}")
    check_geometries(test_res, crop_pcts or [0.875])           # fail before loading anything
    directory = find_checkpoint(checkpoint)
    model, meta = open_checkpoint(directory)
    geometries = check_geometries(test_res, crop_pcts or [meta.crop_pct])
    interpolation = interpolation or meta.interpolation
    report = load_split(data, split, meta.class_names)
    selection = select_split(meta, data, select_on, split=split, select_images=select_images)
    dev = resolve_device(device, dist_env)
    model.to(dev)
    skipped: list = []

    def run(index: SplitIndex, name: str, keep_skipped: bool) -> tuple[SweepRow, ...]:
        bar = (lambda it: iterate(it, f"sweep {name} x{len(geometries)}", total=len(it),
                                  enabled=not quiet and dist_env.is_main))
        results = sweep_model(model, index, geometries=geometries, interpolation=interpolation,
                              preprocess=Preprocess(meta.mean, meta.std), device=dev, batch_size=batch_size,
                              workers=workers, amp_dtype=autocast_dtype(amp, dev), dist_env=dist_env, progress=bar,
                              skipped=skipped if keep_skipped else None)
        return to_rows(results, checkpoint=str(directory), meta=meta, split=name)

    rows = run(report, split, True)
    if selection.split is None:
        chosen = ()
    elif selection.index is None:
        chosen = rows
    else:
        chosen = run(selection.index, selection.split, False)
    if chosen and all(r.n == 0 for r in chosen):
        raise FixresError(f"no readable image in the {selection.split} selection split")
    best_row = choose_best(chosen) if chosen else None
    best = (best_row.test_res, best_row.crop_pct) if best_row else None
    pct = best[1] if best else geometries[0][1]
    sized = (selection.index, selection.split) if selection.index is not None else (report, split)
    return SweepResult(rows, chosen, best, selection.split, selection,
                       predicted_test_res(directory, meta, pct, *sized), tuple(skipped), str(dev))


def training_scale_ratio(checkpoint_dir: Path) -> tuple[tuple[float, float], tuple[float, float], str]:
    """The RandomResizedCrop scale and ratio of the run (its config.yaml), else the defaults."""
    from .config import read_yaml
    from .data.transforms import DEFAULT_RATIO, DEFAULT_SCALE
    path = Path(checkpoint_dir).parent.parent / "config.yaml"
    try:
        cfg = read_yaml(path) if path.is_file() else {}
        return tuple(map(float, cfg["scale"])), tuple(map(float, cfg["ratio"])), str(path)
    except (FixresError, KeyError, TypeError, ValueError):
        return DEFAULT_SCALE, DEFAULT_RATIO, "defaults (no run config.yaml)"


def predicted_test_res(checkpoint_dir: Path, meta: CheckpointMeta, crop_pct: float, index: SplitIndex,
                       index_name: str) -> dict:
    """The geometric (apparent-object-size) prediction of :mod:`fixres.analyze` for this run,
    a Monte-Carlo of the exact sampler over the image sizes of ``index``; or why there is none."""
    from .analyze import predict_test_res   # imported when used: analysis is not needed to sweep
    scale, ratio, settings_from = training_scale_ratio(checkpoint_dir)
    sizes = [(s.width, s.height) for s in index.samples]
    try:
        p = predict_test_res(meta.train_res, scale=scale, ratio=ratio, crop_pct=crop_pct, sizes=sizes or None,
                             source=f"{len(sizes)} {index_name} image sizes")
    except FixresError as e:
        return {"test_res": None, "note": f"no geometric prediction: {e}"}
    return {"test_res": p.test_res, "statistic": p.statistic, "scale": list(scale), "ratio": list(ratio),
            "crop_pct": crop_pct, "rrc_settings_from": settings_from, "sizes": p.source,
            "note": "geometric prediction (apparent object size), not a measurement"}
