"""``fixres tune``: a user's model, the demo's story on their data, one model for every budget.

predict the test resolution from the crop geometry -> sweep test resolutions (the best chosen
on held-out training images, or a training sample: never val) -> pick the rungs (the Pareto
front of accuracy against measured cost, a handful, plus the resolution above the best: the
FixRes adaptation moves the optimum up) -> build the ladder (:func:`~fixres.adapt.ladder.adapt_ladder`)
-> sweep it beside the unadapted model -> export it (one timm folder per rung, ONNX when installed)
-> ``report.html``: the curves and, per budget, the rung to deploy.

The folder ``OUT`` is written as one unit (a temporary sibling renamed into place at the end)::

    tune.json  report.html  report.md  accuracy.png  cost.png  apparent_size.png
    sweep/  ladder/  ladder-sweep/  export/
"""
from __future__ import annotations

import dataclasses
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from ..adapt import AdaptOptions
from ..adapt.ladder import adapt_ladder, check_rungs
from ..analyze import image_sizes, plot_apparent_size
from ..core.errors import FixresError
from ..core.options import option
from ..core.pareto import pareto_front
from ..core.progress import Progress
from ..core.rundir import atomic_path, prepare_run_dir, write_json
from ..core.runtime import Dist, RuntimeOptions
from ..data.corruptions import parse_corruptions
from ..data.folder import scan_split
from ..data.transforms import resolutions
from ..deploy.export import export_checkpoint
from ..measure.sweep import SweepOptions, sweep_checkpoint, sweep_ladder
from ..measure.sweep_report import comparison_json, sweep_json, write_comparison, write_sweep
from ..models.ladder import Ladder
from ..models.sources import ModelSource, as_source, declared_preprocessing
from .tune_report import tune_text, write_tune_report

TUNE_FILE = "tune.json"
SWEEP_FACTORS = (0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5)   # of the train resolution, when no --sweep-res is given


@dataclass(frozen=True, kw_only=True)
class TuneOptions(RuntimeOptions):
    sweep_res: Optional[tuple[int, ...]] = option(
        None, "test resolutions to sweep: values and/or START:END:STEP ranges (default: 0.75-2.5x the model's train "
              "resolution)", parse=resolutions, type=str, metavar="RES")
    rungs: int = option(4, "at most this many rungs, from the Pareto front of held-out accuracy against cost")
    rung_res: Optional[tuple[int, ...]] = option(None, "the rungs' resolutions instead of the front's",
                                                 parse=resolutions, type=str, metavar="RES")
    method: Literal["fixres", "bn", "parametric", "head"] = option("fixres", "how each rung adapts (fixres adapt --method)")
    compare: tuple[str, ...] = option((), "also build ladders of these methods on the same rungs, for the report "
                                          "(e.g. bn: label-free)", metavar="METHOD")
    epochs: int = option(30, "adaptation epochs (training methods)")
    lr: Optional[float] = option(None, "adaptation learning rate (default: fixres adapt's)")
    images: Optional[int] = option(None, "adaptation images, drawn at random (default: every training image the model "
                                         "did not hold out)")
    budget_ms: Optional[float] = option(None, "the report's deployment budget: measured single-image latency (ms)")
    budget_gflops: Optional[float] = option(None, "the report's deployment budget: GFLOPs per image")
    timing: bool = option(True, "measure each resolution's speed (--no-timing: cost in GFLOPs only)")
    engine: Literal["auto", "torch", "onnxruntime", "openvino"] = option("auto", "what times the forwards (fixres sweep --engine)")
    onnx: Optional[bool] = option(None, "export each rung as ONNX too (default: when onnx and onnxruntime are installed)")
    select_images: int = option(50, "a model fixres did not train: training images per class that choose the best")
    corrupt: Optional[tuple[str, ...]] = option(
        None, "the ladder and the model at its rungs also measured under these corruptions (fixres sweep --corrupt): "
              "the report's robustness columns", parse=parse_corruptions, type=str, metavar="NAME:SEV")
    seed: int = option(0, "random seed (adaptation order, image subset)")

    def __post_init__(self):
        super().__post_init__()
        if self.rungs < 1:
            raise FixresError(f"rungs must be at least 1, got {self.rungs}")
        if self.rung_res is not None:
            check_rungs(self.rung_res)
        for name in ("budget_ms", "budget_gflops"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise FixresError(f"--{name.replace('_', '-')} must be positive, got {value:g}")
        if self.budget_ms is not None and not self.timing:
            raise FixresError("--budget-ms needs the measured latency, which --no-timing turns off")
        unknown = [m for m in self.compare if m not in ("fixres", "bn", "parametric", "head") or m == self.method]
        if unknown:
            raise FixresError(f"--compare {unknown[0]}: give other methods than --method (fixres, bn, parametric, "
                              "head)")
        twice = sorted({m for m in self.compare if self.compare.count(m) > 1})
        if twice:
            raise FixresError(f"--compare {twice[0]} is given twice")


@dataclass(frozen=True)
class TuneResult:
    summary: dict           # tune.json
    out: Path

    def text(self) -> str:
        return tune_text(self.summary) + f"\nladder: {self.out / 'ladder'}; timm folders: {self.out / 'export'}"


def run_tune(source: "str | Path | ModelSource", data: str | Path, opts: TuneOptions, out: str | Path, *,
             overwrite: bool = False, quiet: bool = False, dist_env: Dist = Dist(), extra: dict | None = None) -> TuneResult:
    """Run every stage into the folder ``out`` (checked before any work; written as one unit).
    ``extra``: more of the story for the report (the demo passes its training run)."""
    source = as_source(source)
    out = prepare_run_dir(out, overwrite=overwrite, marker=TUNE_FILE, what="tune folder", clear=False, keep=False)
    sweep_res = opts.sweep_res or _default_sweep(source)
    say = (lambda text: None) if quiet else Progress.write
    stages = Stages(say, 5)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, existing="replace" if overwrite else "empty") as tmp:
        tmp.mkdir()
        summary = _stages(source, Path(data), opts, tmp, sweep_res, stages, quiet, dist_env)
        summary.update(extra or {})
        summary["out"] = str(out)
        summary["timings"] = stages.timings
        summary["report"] = {k: str(out / Path(v).name) for k, v in write_tune_report(tmp, summary).items()}
        write_json(tmp / TUNE_FILE, summary)
    return TuneResult(summary, out)


class Stages:
    """Numbered stage lines (nothing silent for long: every stage has its own progress bars)."""

    def __init__(self, say, total: int):
        self.say, self.total, self.timings, self._t0 = say, total, {}, None

    def start(self, name: str, text: str) -> None:
        self.say(f"[{len(self.timings) + 1}/{self.total}] {text}")
        self.timings[name] = time.perf_counter()

    def done(self, name: str) -> None:
        self.timings[name] = round(time.perf_counter() - self.timings[name], 1)


def _default_sweep(source: ModelSource) -> tuple[int, ...]:
    train_res = source.train_res or declared_preprocessing(source).train_res
    return tuple(sorted({max(8, int(round(train_res * f / 8)) * 8) for f in SWEEP_FACTORS}))


def _stages(source: ModelSource, data: Path, opts: TuneOptions, tmp: Path, sweep_res, stages: Stages, quiet: bool,
            dist_env: Dist) -> dict:
    common = dict(device=opts.device, workers=opts.workers, batch_size=opts.batch_size, amp=opts.amp)
    stages.start("predict", "predicting the test resolution from the crop geometry and the training images' sizes")
    prep = declared_preprocessing(source)
    sizes = image_sizes(scan_split(data / "train"))
    prediction = plot_apparent_size(tmp / "apparent_size.png", prep.train_res, scale=prep.scale, ratio=prep.ratio,
                                    crop_pct=prep.crop_pct, sizes=sizes, seed=opts.seed,
                                    source=f"{len(sizes)} training images")
    stages.done("predict")

    stages.start("sweep", f"measuring accuracy and cost at {len(sweep_res)} test resolutions "
                          f"({', '.join(map(str, sweep_res))} px), chosen on held-out training images")
    sweep_opts = SweepOptions(test_res=sweep_res, select_on=_select_on(source), select_images=opts.select_images,
                              timing=opts.timing, engine=opts.engine, budget_ms=opts.budget_ms,
                              budget_gflops=opts.budget_gflops, **common)
    swept = sweep_checkpoint(source, data, sweep_opts, quiet=quiet, dist_env=dist_env)
    write_sweep(swept, tmp / "sweep")
    stages.done("sweep")

    rungs, why = pick_rungs(swept, opts)
    stages.start("ladder", f"adapting ({opts.method}) at {', '.join(map(str, rungs))} px: {why}")
    adapt = AdaptOptions(test_res=rungs[0], method=opts.method, epochs=opts.epochs, lr=opts.lr, images=opts.images,
                         seed=opts.seed, **common)
    ladders = {opts.method: tmp / "ladder"}
    adapt_ladder(source, data, adapt, rungs, out=tmp / "ladder", quiet=quiet, timing=opts.timing, engine=opts.engine,
                 dist_env=dist_env, one_rung="ladder")
    for method in opts.compare:
        ladders[method] = tmp / f"ladder-{method}"
        adapt_ladder(source, data, dataclasses.replace(adapt, method=method), rungs, out=ladders[method], quiet=quiet,
                     timing=False, dist_env=dist_env, one_rung="ladder")
    stages.done("ladder")

    stages.start("ladder_sweep", "sweeping the ladder beside the unadapted model"
                 + (f", clean and under {len(opts.corrupt)} corruptions" if opts.corrupt else ""))
    ladder_opts = dataclasses.replace(sweep_opts, test_res=rungs, budget_ms=None, budget_gflops=None,
                                      corrupt=opts.corrupt)
    compared = sweep_ladder(tmp / "ladder", data, ladder_opts, quiet=quiet, dist_env=dist_env)
    write_comparison(compared, tmp / "ladder-sweep")
    stages.done("ladder_sweep")

    stages.start("export", "exporting every rung as a timm folder" + (" and ONNX" if _onnx(opts) else ""))
    export_checkpoint(tmp / "ladder", tmp / "export", onnx=_onnx(opts))
    stages.done("export")
    return {"source": {"checkpoint": source.checkpoint, "model": source.model, "weights": source.weights},
            "data": str(data), "options": dataclasses.asdict(opts), "prediction": prediction.row(),
            "sweep": sweep_json(swept), "rungs": {"test_res": list(rungs), "why": why},
            "ladders": {m: Ladder.open(p).record for m, p in ladders.items()},
            "ladder_sweep": comparison_json(compared), "deployments": budget_choices(Ladder.open(tmp / "ladder"), opts)}


def _select_on(source: ModelSource) -> str:
    """The held-out images when the checkpoint records them, else a training sample: never val."""
    if source.checkpoint is not None:
        from ..models.checkpoint import read_meta
        return "holdout" if read_meta(source.checkpoint).holdout else "train"
    return "train"


def _onnx(opts: TuneOptions) -> bool:
    if opts.onnx is not None:
        return opts.onnx
    return importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("onnxruntime") is not None


def pick_rungs(swept, opts: TuneOptions) -> tuple[tuple[int, ...], str]:
    """The rungs: ``--rung-res``, or up to ``--rungs`` points of the Pareto front of the selection
    split's accuracy against the measured cost (latency when timed, else GFLOPs) spread over the
    front from the cheapest to the best, and the swept resolution just above the best (where the
    adaptation is likely to move the optimum, FixRes section 5)."""
    if opts.rung_res is not None:
        return tuple(sorted(opts.rung_res)), "the resolutions given"
    rows = sorted({r.test_res: r for r in swept.selection_rows or swept.rows}.values(), key=lambda r: r.test_res)
    cost = "latency_ms" if rows[0].latency_ms is not None else "gflops"
    front = [rows[i] for i in pareto_front([(getattr(r, cost), r.top1) for r in rows])]
    front.sort(key=lambda r: getattr(r, cost))
    if len(front) > opts.rungs - 1 >= 1:
        keep = sorted(set(np.linspace(0, len(front) - 1, opts.rungs - 1).round().astype(int).tolist()))
        front = [front[i] for i in keep]
    picked = {r.test_res for r in front[:opts.rungs]}
    best = max(front, key=lambda r: r.top1).test_res
    above = [r.test_res for r in rows if r.test_res > best]
    if above and len(picked) < opts.rungs + 1:
        picked.add(above[0])
    # a flat front (ties) leaves few points: the swept resolutions nearest the best, higher ones first
    near = sorted((r.test_res for r in rows), key=lambda k: (abs(k - best), -k))
    for k in near:
        if len(picked) >= min(opts.rungs, len(rows)):
            break
        picked.add(k)
    split = (swept.selection_rows[0].split if swept.selection_rows else swept.rows[0].split)
    why = (f"the Pareto front of {split} top-1 against {'measured latency' if cost == 'latency_ms' else 'GFLOPs'} "
           f"({len(front)} rungs from the cheapest to the best, {best}px)"
           + (f", and {above[0]}px above it (the adaptation moves the optimum up)" if above else ""))
    return tuple(sorted(picked)), why


def budget_choices(ladder: Ladder, opts: TuneOptions) -> list[dict]:
    """The rung to deploy for the budget given, and for each rung's own cost as a budget."""
    field, flag = ("latency_ms", "ms") if ladder.rungs[0].get("latency_ms") is not None else ("gflops", "gflops")
    best = max(ladder.rungs, key=lambda r: r["selection_top1"])
    budgets = sorted({r[field] for r in ladder.rungs})
    asked = opts.budget_ms if field == "latency_ms" else opts.budget_gflops
    choices = []
    for budget in ([asked] if asked else []) + budgets:
        try:
            rung = ladder.choose(**{f"budget_{flag}": budget * (1 + 1e-9)})
        except FixresError as e:
            choices.append({"budget": budget, "unit": "ms" if flag == "ms" else "GFLOPs", "asked": budget == asked,
                            "rung": None, "note": str(e)})
            continue
        choices.append({"budget": budget, "unit": "ms" if flag == "ms" else "GFLOPs", "asked": budget == asked,
                        "rung": rung["test_res"], "selection_top1": rung["selection_top1"],
                        "val_top1": rung["after"]["top1"], "of_best": rung["selection_top1"] / best["selection_top1"],
                        "split": rung["selection_split"], "best": best["test_res"]})
    return choices


__all__ = ["TUNE_FILE", "TuneOptions", "TuneResult", "budget_choices", "pick_rungs", "run_tune"]
