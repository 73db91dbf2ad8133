"""Accuracy against test resolution, in one pass over the data.

Every image is decoded once and turned into one uint8 tensor per geometry
``(test_res, crop_pct)`` by the same :class:`~fixres.data.transforms.EvalTransform` that
``fixres eval`` uses; a batch holds one stacked tensor per geometry, the model runs once
per geometry, and one device-side :class:`~fixres.measure.infer.Tally` per geometry sums the
metrics. With the same batch size each geometry sees exactly the batches ``evaluate``
would see, so a sweep row equals ``fixres eval`` at that geometry.

The best resolution is chosen on images that are not the reported split: the training
images held out by ``fixres train --holdout`` when the checkpoint records them, otherwise
a deterministic sample of the training split (seen in training, and said so).

Memory: the model runs on one geometry at a time, so device memory is that of
``fixres eval`` at the largest resolution with the same batch size. On the host, a batch
holds ``batch_size * 3 * sum(test_res**2)`` bytes; the loader keeps fewer batches in
flight when that exceeds ``fixres.data.loader.HOST_BUDGET_MB`` (see :func:`~fixres.data.pipeline.multi_view_loader`).

Cost beside accuracy: every row also records the geometry's FLOPs per image (counted on
the ``meta`` device, :mod:`fixres.measure.costs`), the model's parameters, and its measured
throughput and single-image latency at that resolution on the device in use
(:mod:`fixres.measure.timing`; ``timing=False`` skips it). The deployment choices of
:mod:`fixres.measure.choose` (``within``, ``budget_ms``, ``budget_gflops``) are made on the
selection split, like the best. Costs are measured before the data pass, so an impossible
budget fails before the expensive part.

Several checkpoints (:func:`sweep_checkpoints`, e.g. a run and its ``fixres adapt``
outputs) are swept one after the other, each decoding the data itself; their costs are
measured once per architecture.

The text table, JSON record and output files of a :class:`SweepResult` are made by
:mod:`fixres.measure.sweep_report` (measurement here, reporting there: data flows one way).
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

from torch import nn

from ..core.errors import FixresError
from ..core.options import option
from ..core.progress import notice
from ..core.runtime import Dist, Runtime, RuntimeOptions
from ..data.corruptions import parse_corruptions
from ..data.index import SplitIndex
from ..data.preprocessing import Preprocessing
from ..data.transforms import check_geometries, resolutions
from ..models.checkpoint import CheckpointMeta, read_meta
from ..models.heads import find_classifier
from ..models.ladder import Ladder, is_ladder
from ..models.sizes import check_input_size, fit_batch
from ..models.sources import ModelSource, Opened, as_source, open_for_data, open_model
from .choose import BUDGETS, Deployment, choose_best, deployments, fits_budget
from .costs import ResolutionCost, cost_key, resolution_costs, with_timings
from .infer import EvalResult, load_split
from .onepass import sweep_model
from .robustness import (
    check_objective,
    choices_by_objective,
    fitted_temperatures,
    objective_rows,
    split_variants,
)
from .selection import Selection, prediction, select_split
from .timing import resolve_engine


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
    # What the geometry costs (the same on every split): see ResolutionCost.
    gflops: float | None = None               # per image, 1 multiply-add = 2 FLOPs
    params: int | None = None
    images_per_s: float | None = None         # at timing_batch_size, median; None: not timed
    images_per_s_iqr: float | None = None
    latency_ms: float | None = None           # one image alone, median
    latency_ms_iqr: float | None = None
    timing_device: str | None = None
    timing_dtype: str | None = None
    timing_batch_size: int | None = None
    timing_stable: bool | None = None          # both IQRs within 25% of their medians (measure.timing)
    timing_engine: str | None = None           # what ran the timed forwards (torch, onnxruntime)
    corruption: str | None = None              # None: clean; "gaussian_noise:3"...; "mean" over the corruptions
    ece: float | None = None                   # expected calibration error, percent (15 bins)
    nll: float | None = None                   # cross-entropy at ``temperature``
    temperature: float = 1.0                   # fitted on the selection images with --calibrate

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
    deployments: tuple[Deployment, ...] = ()   # --within / --budget-* choices, made like best
    train_res_from: str = ""                   # a model fixres did not train: where its train resolution comes from
    corrupted_rows: tuple[SweepRow, ...] = ()          # the reported split under each --corrupt
    corrupted_selection_rows: tuple[SweepRow, ...] = ()
    shifted_selection_rows: tuple[SweepRow, ...] = ()  # --shift-select: the shifted images that choose
    objective: str = "clean"
    objective_choices: dict = field(default_factory=dict)   # objective -> (test_res, crop_pct) it would choose

    @property
    def train_res(self) -> int:
        return self.rows[0].train_res

    @property
    def trained_at(self) -> str:
        """``trained at 32px``, or for weights that do not record it, where the figure comes from."""
        if not self.train_res_from:
            return f"trained at {self.train_res}px"
        return f"train resolution {self.train_res}px from {self.train_res_from}, not recorded by the weights"

    @property
    def timed(self) -> bool:
        return self.rows[0].latency_ms is not None

    @property
    def selected_on_report(self) -> bool:
        """True when the best was chosen on the reported split itself (``select_on="val"``)."""
        return self.chosen_on == self.rows[0].split

    def best_row(self) -> SweepRow | None:
        """The reported split's row at the chosen geometry."""
        return next((r for r in self.rows if (r.test_res, r.crop_pct) == self.best), None)


def to_rows(results: Sequence[EvalResult], *, checkpoint: str, meta: "CheckpointMeta | Sequence[CheckpointMeta]",
            split: str, costs: dict[int, ResolutionCost] | None = None,
            variants: Sequence[str | None] = (None,)) -> tuple[SweepRow, ...]:
    """One row per result; ``meta``: the model's, or one per geometry (a ladder's rungs);
    ``variants``: the results are variant-major, one block of geometries per variant."""
    per = len(results) // len(variants)
    metas = [meta] * per if isinstance(meta, CheckpointMeta) else list(meta)
    return tuple(_row(r, checkpoint, metas[i % per], split, costs, variants[i // per]) for i, r in enumerate(results))


def _row(r: EvalResult, checkpoint: str, meta: CheckpointMeta, split: str, costs,
         corruption: str | None = None) -> SweepRow:
    adapted = (meta.adaptation or {}).get("method")
    prep = meta.preprocessing
    costs = costs or {}
    return SweepRow(checkpoint, meta.model, prep.train_res, r.test_res, r.crop_pct,
                    prep.test_view(r.test_res, r.crop_pct).resize_size, r.interpolation, split, r.top1, r.top5,
                    r.loss, r.n, r.n_skipped, adapted, **(costs[r.test_res].fields() if r.test_res in costs else {}),
                    corruption=corruption, ece=r.ece, nll=r.nll, temperature=r.temperature)


@dataclass(frozen=True, kw_only=True)
class SweepOptions(RuntimeOptions):
    test_res: tuple[int, ...] = option(help="test resolutions: values and/or START:END:STEP ranges, END included "
                                            "(e.g. 32:128:16)", parse=resolutions, type=str, metavar="RES")
    crop_pct: Optional[tuple[float, ...]] = option(None, "centre-crop fractions; every (test_res, crop_pct) pair is "
                                                         "swept (default: the checkpoint's)", metavar="PCT")
    select_on: Optional[Literal["holdout", "train", "val", "none"]] = option(
        None, "images that choose the best resolution: holdout (training images held out by `fixres train "
              "--holdout`), train (a sample of the training split, seen in training), val (the reported split "
              "itself: optimistic) or none (default: holdout if the checkpoint records one, else train)")
    select_images: int = option(50, "--select-on train: images per class of the training sample")
    split: str = option("val", "sub-directory the accuracy is reported on")
    timing: bool = option(True, "measure throughput (at --batch-size) and single-image latency at every resolution "
                                "on the device in use; --no-timing skips it (FLOPs are still counted)")
    engine: Literal["auto", "torch", "onnxruntime", "openvino"] = option(
        "auto", "what runs the timed forwards: torch, or onnxruntime / openvino (CPU) on the model exported to ONNX at "
                "each resolution (checked against PyTorch's logits); auto: onnxruntime on the CPU where it is "
                "installed, else torch")
    timing_budget: float = option(0.3, "seconds of timed forward passes per resolution (after warm-up; at least 3 "
                                       "batches and 5 single images whatever the budget)", metavar="S")
    corrupt: Optional[tuple[str, ...]] = option(
        None, "also measure every resolution under these common corruptions (ImageNet-C's, on the decoded image): "
              "NAME:SEVERITY, all:SEVERITY (the fifteen but glass blur), all+slow:3, severities 1-5; needs "
              "pip install 'fixres[robustness]'", parse=parse_corruptions, type=str, metavar="NAME:SEV")
    corrupt_seed: int = option(0, "seed of the corruptions' noise (each image's own, per corruption)")
    calibrate: bool = option(False, "fit a temperature per resolution on the selection images (held-out training "
                                    "images) and report ECE and NLL on --split with it")
    objective: Literal["clean", "corrupted", "shifted", "mean"] = option(
        "clean", "what the best and the deployment resolutions are chosen on, on the selection images: clean top-1, "
                 "the mean top-1 under --corrupt, top-1 on --shift-select, or the mean of those measured")
    shift_select: Optional[str] = option(None, "a split of shifted images that chooses under --objective shifted "
                                               "(fixres data synth --shift writes shifted-holdout)")
    within: Optional[float] = option(None, "deploy: the smallest resolution whose top-1 on the selection split is "
                                           "within P points of the best", metavar="P")
    budget_ms: Optional[float] = option(None, "deploy: the most accurate resolution whose measured single-image "
                                              "latency is at most X ms", metavar="X")
    budget_gflops: Optional[float] = option(None, "deploy: the most accurate resolution that costs at most Y GFLOPs "
                                                  "per image", metavar="Y")

    def __post_init__(self):
        super().__post_init__()
        check_geometries(self.test_res, self.crop_pct or [0.875])
        if self.select_images < 1:
            raise FixresError(f"select_images must be at least 1, got {self.select_images}")
        if self.timing_budget < 0:
            raise FixresError(f"timing_budget must not be negative, got {self.timing_budget:g}")
        if self.within is not None and self.within < 0:
            raise FixresError(f"--within must not be negative, got {self.within:g} (points of top-1 below the best)")
        for name, (flag, _) in {"budget_ms": BUDGETS["latency_ms"], "budget_gflops": BUDGETS["gflops"]}.items():
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise FixresError(f"{flag} must be positive, got {value:g}")
        asked = [flag for flag, v in (("--within", self.within), ("--budget-ms", self.budget_ms),
                                      ("--budget-gflops", self.budget_gflops)) if v is not None]
        if asked and self.select_on == "none":
            raise FixresError(f"{' and '.join(asked)} {'choose' if len(asked) > 1 else 'chooses'} on the selection "
                              "split, which --select-on none turns off")
        if self.budget_ms is not None and not self.timing:
            raise FixresError("--budget-ms needs the measured latency, which --no-timing turns off")
        check_objective(self.objective, self.corrupt, self.shift_select, self.select_on)
        if self.calibrate and self.select_on in ("val", "none"):
            raise FixresError("--calibrate fits the temperature on the selection images (held-out training images or "
                              f"a training sample), not with --select-on {self.select_on}")


def sweep_checkpoint(checkpoint: "str | Path | ModelSource", data: str | Path, opts: SweepOptions, *,
                     quiet: bool = True, dist_env: Dist = Dist(), cost_cache: dict | None = None) -> SweepResult:
    """Sweep a model (a checkpoint path, or any :class:`~fixres.models.sources.ModelSource`) over test
    geometries on ``data/<split>``, choosing the best elsewhere.

    ``opts``: :class:`SweepOptions` (its ``test_res`` is required). Under torchrun every rank
    calls this with its ``dist_env``: each sweeps a
    shard and the sums are all-reduced. ``cost_cache``: a dict shared by calls whose
    checkpoints may have the same architecture, so that its costs are measured once.
    """
    if is_ladder(as_source(checkpoint).checkpoint or ""):
        raise FixresError(f"{checkpoint} is a ladder: sweep it with sweep_ladder (fixres sweep --checkpoint LADDER)")
    opened = open_for_data(checkpoint, data, [opts.split, "train"])
    geometries = check_geometries(opts.test_res, opts.crop_pct or [opened.meta.preprocessing.crop_pct])
    return sweep_opened(opened, data, opts, geometries, quiet=quiet, dist_env=dist_env, cost_cache=cost_cache)


def sweep_opened(opened: Opened, data: str | Path, opts: SweepOptions, geometries, *, quiet: bool = True,
                 dist_env: Dist = Dist(), cost_cache: dict | None = None, switch_for=None,
                 metas: Sequence[CheckpointMeta] | None = None) -> SweepResult:
    """:func:`sweep_checkpoint` of a model opened on the data, at ``geometries``. ``switch_for``:
    ``switch_for(model)`` gives a hook called with a geometry's position before its forwards (a
    ladder's rungs, one per geometry, with their ``metas``)."""
    model, meta = opened.model, opened.meta
    prep = meta.preprocessing
    per_image = check_input_size(model, [r for r, _ in geometries])
    report = load_split(data, opts.split, opened.binding)
    selection = select_split(meta, data, opts.select_on, split=opts.split, select_images=opts.select_images,
                             labels=opened.binding)
    shifted = load_split(data, opts.shift_select, opened.binding) if opts.shift_select else None
    rt = opts.runtime(dist_env, quiet)
    variants = (None, *(opts.corrupt or ()))
    batch = fit_batch(per_image, opts.batch_size, rt.device, f"sweep up to {max(r for r, _ in geometries)}px",
                      input_bytes=4 * 3 * len(variants) * sum(r * r for r, _ in geometries),
                      log=notice if rt.dist.is_main else None)
    model.to(rt.device)
    costs = _costs(model, meta, geometries, opts, rt, batch, cost_cache)
    passes = SweepPasses(model, prep, tuple(geometries), rt, batch, variants, opts.corrupt_seed,
                         switch_for(model) if switch_for is not None else None, str(opened.name), metas or meta, costs)
    selected, temperatures = passes.selection(selection, calibrate=opts.calibrate)
    rows, corrupted = passes.run(report, opts.split, temperatures=temperatures, keep_skipped=True)
    shift_rows = passes.run(shifted, opts.shift_select, variants=(None,))[0] if shifted is not None else ()
    chosen, chosen_corrupted = selected if selection.index is not None else (rows, corrupted)
    if selection.split is None:
        chosen, chosen_corrupted = (), ()
    if chosen and all(r.n == 0 for r in chosen):
        raise FixresError(f"no readable image in the {selection.split} selection split")
    ranked = objective_rows(opts.objective, chosen, chosen_corrupted, shift_rows) if chosen else ()
    best_row = choose_best(ranked) if ranked else None
    best = (best_row.test_res, best_row.crop_pct) if best_row else None
    pct = best[1] if best else geometries[0][1]
    sized = (selection.index, selection.split) if selection.index is not None else (report, opts.split)
    choices = deployments(ranked, rows, within=opts.within, budget_ms=opts.budget_ms, budget_gflops=opts.budget_gflops)
    return SweepResult(rows, chosen, best, selection.split, selection, prediction(prep, meta, pct, *sized),
                       tuple(passes.skipped), str(rt.device), choices,
                       prep.source_of("train_res") if meta.weights_from is not None else "", corrupted,
                       chosen_corrupted if selection.index is not None else (), shift_rows, opts.objective,
                       choices_by_objective(chosen, chosen_corrupted, shift_rows) if chosen else {})


def _costs(model, meta, geometries, opts: SweepOptions, rt, batch: int, cost_cache: dict | None) -> dict:
    """Each resolution's cost, measured once per architecture (``cost_cache``), before the data
    pass: an impossible budget fails before the expensive part."""
    cache = {} if cost_cache is None else cost_cache
    key = cost_key(meta)
    if key not in cache:
        costs = resolution_costs(model, meta, [r for r, _ in geometries])
        if opts.budget_gflops is not None:
            fits_budget(list(costs.values()), gflops=opts.budget_gflops)
        if opts.timing:
            costs = with_timings(costs, model, rt, batch_size=batch, budget_s=opts.timing_budget,
                                 engine=resolve_engine(opts.engine, rt.device), fallback=opts.engine == "auto")
        cache[key] = costs
    costs = cache[key]
    if opts.budget_ms is not None or opts.budget_gflops is not None:
        fits_budget(list(costs.values()), ms=opts.budget_ms, gflops=opts.budget_gflops)
    return costs


@dataclass
class SweepPasses:
    """The passes of one sweep over its splits: every geometry and variant from one decode per
    image, as rows."""

    model: nn.Module
    prep: Preprocessing
    geometries: tuple
    rt: Runtime
    batch: int
    variants: tuple
    seed: int
    switch: Callable | None
    checkpoint: str
    metas: object
    costs: dict
    skipped: list = field(default_factory=list)

    def run(self, index: SplitIndex, name: str, *, temperatures=None, keep_skipped: bool = False, tallies=None,
            variants=None) -> tuple[tuple, tuple]:
        """``(clean rows, corrupted rows)`` of ``index``."""
        variants = self.variants if variants is None else variants
        results = sweep_model(self.model, index, self.prep, self.geometries, self.rt, batch_size=self.batch,
                              label=f"sweep {name}", skipped=self.skipped if keep_skipped else None,
                              before_view=self.switch, variants=variants, seed=self.seed, temperatures=temperatures,
                              tallies_out=tallies)
        rows = to_rows(results, checkpoint=self.checkpoint, meta=self.metas, split=name, costs=self.costs,
                       variants=variants)
        return split_variants(rows, len(self.geometries))

    def selection(self, selection: Selection, *, calibrate: bool) -> tuple[tuple[tuple, tuple], list | None]:
        """The selection split's rows (when it is not the reported one) and, with ``calibrate``,
        the temperature fitted on them per geometry."""
        if selection.index is None:
            return ((), ()), None
        tallies = [] if calibrate else None
        rows = self.run(selection.index, selection.split, tallies=tallies)
        return rows, (fitted_temperatures(tallies, len(self.geometries), self.rt.dist) if calibrate else None)


@dataclass(frozen=True)
class SweepComparison:
    """Several checkpoints swept over the same geometries and data (e.g. a run and its
    adapted versions): one :class:`SweepResult` per checkpoint, in the order given."""

    results: tuple[SweepResult, ...]
    labels: tuple[str, ...]            # short names for tables and legends, one per result

    def items(self):
        return zip(self.labels, self.results)


def checkpoint_label(meta: CheckpointMeta) -> str:
    """``fixres at 96px`` for an adapted checkpoint, else ``not adapted``."""
    adaptation = meta.adaptation or {}
    if adaptation.get("method"):
        return f"{adaptation['method']} at {meta.preprocessing.test_res}px"
    return "not adapted"


def _labels(checkpoints: Sequence[str | Path], metas: Sequence[CheckpointMeta]) -> tuple[str, ...]:
    """:func:`checkpoint_label` of each, or the names given on the command line where those collide."""
    labels = [checkpoint_label(m) for m in metas]
    if len(set(labels)) == len(labels):
        return tuple(labels)
    paths = [Path(as_source(c).checkpoint or as_source(c).model) for c in checkpoints]
    names = [p.name if p.name not in ("best", "last") else p.parent.name for p in paths]
    return tuple(names if len(set(names)) == len(names) else [f"{i + 1}: {n}" for i, n in enumerate(names)])


def sweep_checkpoints(checkpoints: Sequence["str | Path | ModelSource"], data: str | Path,
                      opts: SweepOptions, *, quiet: bool = True, dist_env: Dist = Dist()) -> SweepComparison:
    """:func:`sweep_checkpoint` for each model (checkpoint paths or sources), one after the other
    (each decodes the data itself), with the same options; costs are measured once per
    architecture.

    The models must have the same classes (checked before any work for checkpoints; a
    ``--model`` is opened to read its classes).
    """
    if not checkpoints:
        raise FixresError("no checkpoint to sweep")
    metas = [_meta_of(as_source(c)) for c in checkpoints]
    for c, m in zip(checkpoints[1:], metas[1:]):
        if m.class_names != metas[0].class_names:
            raise FixresError(f"checkpoints {checkpoints[0]} and {c} have different classes "
                              f"({len(metas[0].class_names)} vs {len(m.class_names)}, or another order): "
                              "they cannot be compared on the same data")
    cache: dict = {}
    results = tuple(sweep_checkpoint(c, data, opts, quiet=quiet, dist_env=dist_env, cost_cache=cache)
                    for c in checkpoints)
    return SweepComparison(results, _labels(checkpoints, metas))


def sweep_ladder(path: str | Path, data: str | Path, opts: SweepOptions, *, quiet: bool = True,
                 dist_env: Dist = Dist()) -> SweepComparison:
    """A ladder's curve beside its unadapted model's: the base swept over ``opts.test_res``, and
    each rung at its own resolution (one decode per image for every rung, each rung's tensors
    swapped in before its forwards). The best and the deployment choices of the ladder are made
    among its rungs, on the same selection images as the base's."""
    ladder = Ladder.open(path)
    cache: dict = {}
    base = sweep_checkpoint(ladder.base, data, opts, quiet=quiet, dist_env=dist_env, cost_cache=cache)
    opened = open_for_data(ladder.base, data, [opts.split, "train"])
    metas = [read_meta(ladder.root / r["dir"]) for r in ladder.rungs]
    geometries = [(r["test_res"], r["crop_pct"]) for r in ladder.rungs]
    opened.name = str(ladder.root)

    def switch_for(model):
        switch = ladder.switcher(model, find_classifier(model))
        return lambda g: switch(geometries[g][0])
    rungs = sweep_opened(opened, data, dataclasses.replace(opts, test_res=tuple(r for r, _ in geometries)),
                         geometries, quiet=quiet, dist_env=dist_env, cost_cache=cache, switch_for=switch_for,
                         metas=metas)
    return SweepComparison((base, rungs), ("not adapted", f"ladder ({ladder.record['method']})"))


def _meta_of(source: ModelSource) -> CheckpointMeta:
    if source.checkpoint is not None:
        return read_meta(source.checkpoint)
    return open_model(source).meta
