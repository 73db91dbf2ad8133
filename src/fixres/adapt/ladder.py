"""``adapt_ladder``: one model adapted to several test resolutions, written as a ladder.

Each rung is the adaptation :func:`~fixres.adapt.pipeline.adapt_checkpoint` makes at its
resolution with the same options and seed (same before/after top-1 and loss: tested), but the
rungs share the passes over the images, each image decoded once for every rung
(:class:`~fixres.data.loader.MultiView`): the val evaluation before and after (each rung's
tensors swapped in before its forward), and the adaptation pass itself -- the cached features
of the frozen layers (``fixres``, ``head``, ``full``), the batch-norm input moments (``bn``), the
pooled features (``parametric``: the train-time law once, each rung's test law). A training run
that cannot cache (``--aug v2``, ``--no-cache``, a model torch.fx cannot split) adapts rung by
rung through the full network instead, and says so. Under torchrun the images are split across
processes, as in a single adaptation.

The ladder keeps the base weights once and per rung only the tensors that its adaptation
changed (compared with the base, so exactly those), with the rung's preprocessing record,
adaptation report, accuracy, GFLOPs and measured latency (:mod:`fixres.models.ladder`).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import FixresError
from ..core.rundir import prepare_run_dir
from ..core.runtime import Dist
from ..data.loader import MultiView
from ..data.transforms import check_resolution
from ..measure.costs import resolution_costs, with_timings
from ..measure.infer import EvalResult
from ..measure.sweep import sweep_model
from ..measure.timing import resolve_engine
from ..models.equaliser import Equaliser, attach, detach
from ..models.ladder import BASE, LADDER_FILE, LADDER_FORMAT, RUNGS, write_ladder
from ..models.pooled import collect_pooled
from ..models.sources import ModelSource, as_source
from ..version import __version__
from .data import adapt_transform
from .features import build_caches
from .methods import bn_moments, set_bn_statistics
from .options import AdaptOptions
from .parametric import fit_equaliser
from .pipeline import (AdaptContext, AdaptResult, adapt_checkpoint, adaptation_report, prepare_adaptation, tent_method,
                       train_method, train_top, trainable_split)


@dataclass(frozen=True)
class LadderResult:
    rungs: tuple[AdaptResult, ...]    # one adaptation per rung, resolution order (model: the last rung's)
    record: dict                      # ladder.json
    seconds: float
    out: Path | None

    def text(self) -> str:
        lines = [f"{self.record['model']} adapted to {len(self.rungs)} rungs with {self.record['method']} in "
                 f"{self.seconds:.1f}s (one pass over the images for every rung: {self.record['shared_passes']})"]
        for r in self.record["rungs"]:
            cost = f"{r['gflops']:.3g} GFLOPs" + ("" if r.get("latency_ms") is None else
                                                  f", {r['latency_ms']:.3g} ms" + ("" if r["timing_stable"] else "~"))
            lines.append(f"  {r['test_res']:>4}px: val top-1 {r['before']['top1']:.2f} -> {r['after']['top1']:.2f}; "
                         f"{r['selection_split']} {r['selection_top1']:.2f}; {cost}; {r['tensors']} tensors "
                         f"({r['bytes'] / 1024:.1f} KiB)")
        unstable = [r["test_res"] for r in self.record["rungs"] if r.get("timing_stable") is False]
        if unstable:
            lines.append(f"  UNSTABLE latency at {', '.join(map(str, unstable))}px (marked ~: an IQR above 25% of the "
                         "median): the machine was busy; --budget-ms on this ladder says so when it chooses")
        if self.out is not None:
            lines.append(f"ladder: {self.out} (base {self.record['base_bytes'] / 2**20:.1f} MiB + "
                         f"{sum(r['bytes'] for r in self.record['rungs']) / 1024:.1f} KiB of rungs)")
        return "\n".join(lines)


def check_rungs(rungs) -> tuple[int, ...]:
    values = [check_resolution(r, "rung") for r in rungs]
    twice = sorted({r for r in values if values.count(r) > 1})
    if twice:
        raise FixresError(f"rung {twice[0]}px is given twice; a ladder has one rung per resolution")
    return tuple(sorted(values))


def adapt_ladder(checkpoint: "str | Path | ModelSource", data: str | Path, opts: AdaptOptions, rungs, *,
                 out: str | Path | None = None, overwrite: bool = False, quiet: bool = False, timing: bool = True,
                 engine: str = "auto", dist_env: Dist = Dist(), one_rung: str = "checkpoint") -> "LadderResult | AdaptResult":
    """Adapt ``checkpoint`` at every resolution of ``rungs`` (``opts.test_res`` is ignored) and
    write the ladder ``out`` as one unit (a temporary sibling renamed into place). One rung is a
    plain adapted checkpoint (:func:`adapt_checkpoint`) unless ``one_rung="ladder"`` (callers that
    read a ladder back, such as ``fixres tune``). ``timing``: measure each rung's speed on
    ``engine`` (:func:`~fixres.measure.timing.resolve_engine`)."""
    rungs = check_rungs(rungs)
    if one_rung not in ("checkpoint", "ladder"):
        raise ValueError(f"one_rung must be 'checkpoint' or 'ladder', got {one_rung!r}")
    if len(rungs) == 1 and one_rung == "checkpoint":
        return adapt_checkpoint(checkpoint, data, dataclasses.replace(opts, test_res=rungs[0]), out=out,
                                overwrite=overwrite, quiet=quiet, dist_env=dist_env)
    t_start = time.perf_counter()
    rt = opts.runtime(dist_env, quiet)
    engine_asked, engine = engine, resolve_engine(engine, rt.device) if timing else None
    source = as_source(checkpoint)
    if out is not None and dist_env.is_main:
        if source.checkpoint is not None and Path(out).resolve() == Path(source.checkpoint).resolve():
            raise FixresError(f"--out {out} is the checkpoint being adapted; choose another directory")
        out = prepare_run_dir(out, overwrite=overwrite, marker=LADDER_FILE, what="ladder", clear=False, keep=False)
    ctx = prepare_adaptation(source, data, dataclasses.replace(opts, test_res=max(rungs)), rt, rungs=rungs)
    contexts = [_rung_context(ctx, r) for r in rungs]
    base = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
    t0 = time.perf_counter()
    before = _evaluate_all(ctx, contexts, None, "before")
    eval_seconds = time.perf_counter() - t0
    infos, states, shared = _adapt_all(ctx, contexts, base)
    t0 = time.perf_counter()
    after = _evaluate_all(ctx, contexts, states, "after")
    selection, split = _selection(ctx, contexts, states)
    eval_seconds += time.perf_counter() - t0
    seconds = time.perf_counter() - t_start
    results = []
    for c, b, a, info, state in zip(contexts, before, after, infos, states):
        report = adaptation_report(c, ctx.name, b, a, info, seconds / len(rungs), eval_seconds / len(rungs))
        report["ladder"] = {"rungs": list(rungs), "shared_passes": shared}
        meta = ctx.meta.replace(preprocessing=c.prep, adaptation=report,
                                metrics={f"val_{k}": v for k, v in a.row().items()})
        results.append(AdaptResult(ctx.model, meta, b, a, seconds, report, None))
    _load(ctx, base, states[-1])
    costs = resolution_costs(ctx.model, ctx.meta, list(rungs))
    if timing:
        costs = with_timings(costs, ctx.model, rt, batch_size=ctx.pass_batch, engine=engine,
                             fallback=engine_asked == "auto")
    record = _record(ctx, opts, results, states, base, costs, selection, split, shared, rt)
    if out is not None and dist_env.is_main:
        _write(Path(out), ctx, base, results, states, record, overwrite)
    return LadderResult(tuple(results), record, seconds, None if out is None else Path(out))


# ----------------------------------------------------------------------------- contexts and states
def _rung_context(ctx: AdaptContext, test_res: int) -> AdaptContext:
    prep = ctx.meta.preprocessing.override("adaptation", test_res=test_res, crop_pct=ctx.opts.crop_pct)
    return dataclasses.replace(ctx, prep=prep, opts=dataclasses.replace(ctx.opts, test_res=test_res))


@dataclass
class RungState:
    """What a rung changed: the tensors that differ from the base's, and an equaliser record."""

    tensors: dict
    equaliser: dict | None = None


def _snapshot(ctx: AdaptContext, base: dict, equaliser: dict | None = None) -> RungState:
    changed = {k: v.detach().clone() for k, v in ctx.model.state_dict().items() if not torch.equal(v, base[k])}
    return RungState(changed, equaliser)


def _load(ctx: AdaptContext, base: dict, state: RungState | None) -> None:
    """The model as the base, or as a rung (its tensors over the base's, its equaliser)."""
    ctx.model.load_state_dict({**base, **(state.tensors if state else {})})
    classifier = ctx.plan.classifier
    if state is not None and state.equaliser:
        attach(ctx.model, classifier, Equaliser.from_record(state.equaliser))
    else:
        detach(ctx.model, classifier)


# ----------------------------------------------------------------------------- the shared passes
def _views(contexts, transform=lambda c: c.prep.test_view()):
    return MultiView(tuple(transform(c) for c in contexts))


def _evaluate_all(ctx: AdaptContext, contexts, states, when: str) -> list[EvalResult]:
    """Val at every rung's geometry in one decoding pass (each rung's own tensors when ``states``)."""
    geometries = [(c.prep.test_res, c.prep.crop_pct) for c in contexts]
    base = None if states is None else {k: v.clone() for k, v in ctx.model.state_dict().items()}

    def switch(g: int) -> None:
        if states is not None:
            _load(ctx, base, states[g])
    results = sweep_model(ctx.model, ctx.imgs.val, ctx.prep, geometries, ctx.rt, batch_size=ctx.pass_batch,
                          label=f"val {when} x{len(contexts)}", before_view=switch)
    for c, r in zip(contexts, results):
        ctx.rt.log(f"{when}: val@{c.prep.test_res} top-1 {r.top1:.2f}  loss {r.loss:.4f}  ({r.n} images)")
    return results


def _adapt_all(ctx: AdaptContext, contexts, base: dict) -> tuple[list[dict], list[RungState], str]:
    """Every rung's adaptation; returns their execution records, their states and which passes
    the rungs shared."""
    method = "trains" if ctx.opts.trains else ctx.opts.method
    return {"trains": _train_all, "bn": _bn_all, "parametric": _parametric_all, "tent": _tent_all}[method](
        ctx, contexts, base)


def _train_all(ctx: AdaptContext, contexts, base: dict):
    t0 = time.perf_counter()
    splits = [trainable_split(c) for c in contexts]
    if all(s is not None for s, _ in splits):
        loader = ctx.loader(_views(contexts, lambda c: adapt_transform(c.opts.aug, c.prep)))
        caches = build_caches(splits[0][0].bottom, ctx.rt.progress(loader, f"caching features x{len(contexts)}"),
                              len(ctx.imgs.train), ctx.normalizer, ctx.rt, views=len(contexts))
        if all(cache is not None for cache, _ in caches):
            share = (time.perf_counter() - t0) / len(contexts)
            infos, states = [], []
            for c, (split, _), (cache, _) in zip(contexts, splits, caches):
                _load(ctx, base, None)
                torch.manual_seed(c.opts.seed)
                infos.append(train_top(c, split, cache, "", share))
                states.append(_snapshot(ctx, base))
            return infos, states, "val before and after, the feature cache"
    infos, states = _rung_by_rung(ctx, contexts, base, train_method)    # through the whole network
    return infos, states, "val before and after (training ran rung by rung: no feature cache)"


def _tent_all(ctx: AdaptContext, contexts, base: dict):
    infos, states = _rung_by_rung(ctx, contexts, base, tent_method)     # each rung steps at its own resolution
    return infos, states, "val before and after (tent ran rung by rung)"


def _rung_by_rung(ctx: AdaptContext, contexts, base: dict, method) -> tuple[list[dict], list[RungState]]:
    """Each rung adapted on its own from the base, by ``method(rung context)``."""
    infos, states = [], []
    for c in contexts:
        _load(ctx, base, None)
        torch.manual_seed(c.opts.seed)
        infos.append(method(c))
        states.append(_snapshot(ctx, base))
    return infos, states


def _bn_all(ctx: AdaptContext, contexts, base: dict):
    t0 = time.perf_counter()
    names = ctx.plan.batch_norms
    moments, used, skipped = bn_moments(ctx.model, names, ctx.loader(_views(contexts)), ctx.normalizer, ctx.rt,
                                        views=len(contexts))
    share = round((time.perf_counter() - t0) / len(contexts), 3)
    infos, states = [], []
    for c, per_rung in zip(contexts, moments):
        _load(ctx, base, None)
        set_bn_statistics(ctx.model, names, per_rung)
        states.append(_snapshot(ctx, base))
        infos.append({"execution": "one pass", "execution_note": "", "epochs": 0, "images_used": used,
                      "images_skipped": len(skipped), "seconds_features": share, "seconds_train": 0.0})
    return infos, states, "val before and after, the batch-norm statistics"


def _parametric_all(ctx: AdaptContext, contexts, base: dict):
    t0 = time.perf_counter()
    _load(ctx, base, None)
    args = (ctx.model, ctx.plan.classifier)
    prep, rt = ctx.prep, ctx.rt
    train_features, skipped = collect_pooled(
        *args, rt.progress(ctx.loader(prep.train_view(), seed=ctx.opts.seed), f"features@{prep.train_res} train"),
        ctx.normalizer, rt)
    tests, _ = collect_pooled(*args, rt.progress(ctx.loader(_views(contexts)), f"features x{len(contexts)} test"),
                              ctx.normalizer, rt, views=len(contexts))
    if not len(train_features):
        raise FixresError("no adaptation image could be decoded")
    share = round((time.perf_counter() - t0) / len(contexts), 3)
    infos, states = [], []
    for c, test_features in zip(contexts, tests):
        equaliser = fit_equaliser(train_features, test_features)
        record = equaliser.record(ctx.plan.classifier)
        single = _parametric_info(c, train_features, skipped, record, share)
        infos.append(single)
        states.append(RungState({}, record))
    return infos, states, "val before and after, the train-time and test-time pooled features"


def _parametric_info(c: AdaptContext, train_features, skipped, record: dict, seconds: float) -> dict:
    """The execution record :func:`parametric_method` writes, for features measured already."""
    prep, train_tf = c.prep, c.prep.train_view()
    note = (f"train geometry: RandomResizedCrop({train_tf.size}, scale {train_tf.scale[0]:g}-{train_tf.scale[1]:g}, "
            f"ratio {train_tf.ratio[0]:.3g}-{train_tf.ratio[1]:.3g}) + flip {train_tf.hflip:g}"
            + (f" + jitter {train_tf.color_jitter:g}" if train_tf.color_jitter else "")
            + f" (settings from: {prep.source_of('scale')})")
    return {"execution": "two passes", "execution_note": note, "epochs": 0, "images_used": len(train_features),
            "images_skipped": len(skipped), "equaliser": record,
            "train_crops": {k: prep.to_dict()[k] for k in ("train_res", "scale", "ratio", "hflip", "color_jitter")},
            "seconds_features": seconds, "seconds_train": 0.0}


def _selection(ctx: AdaptContext, contexts, states) -> tuple[list[EvalResult], str]:
    """Each rung's accuracy on the images a budget rule may choose on: the training images the
    checkpoint held out, or (none recorded) val, which the record then names."""
    if not ctx.imgs.held_out:
        return [None] * len(contexts), "val"
    held = dataclasses.replace(ctx, imgs=dataclasses.replace(ctx.imgs, val=ctx.imgs.held))
    return _evaluate_all(held, contexts, states, "held-out"), "holdout"


# ----------------------------------------------------------------------------- the record and the files
def _record(ctx, opts, results, states, base, costs, selection, split, shared, rt) -> dict:
    base_bytes = sum(v.numel() * v.element_size() for v in base.values())
    rungs = []
    for result, state, held in zip(results, states, selection):
        res = result.meta.preprocessing.test_res
        cost = costs[res].fields()
        after = result.report["after"]
        rungs.append({
            "test_res": res, "crop_pct": result.meta.preprocessing.crop_pct,
            "resize": result.meta.preprocessing.test_view().resize_size, "dir": f"{RUNGS}/{res}",
            "method": opts.method, "before": result.report["before"], "after": after,
            "selection_split": split, "selection_top1": after["top1"] if held is None else held.top1,
            "tensors": len(state.tensors), "bytes": sum(v.numel() * v.element_size() for v in state.tensors.values()),
            "equaliser": bool(state.equaliser), **cost})
    return {"format": LADDER_FORMAT, "fixres_version": __version__, "model": ctx.meta.model,
            "classes": ctx.meta.num_classes, "method": opts.method, "source": str(ctx.name),
            "base": BASE, "base_bytes": base_bytes, "shared_passes": shared, "rungs": rungs,
            "selection": {"split": split, "note": ("chosen on the training images the checkpoint held out" if
                                                   split == "holdout" else "no held-out images recorded: the "
                                                   "budget rule chooses on val, which is then optimistic")},
            "budget_rule": "the rung of highest selection_top1 among those whose latency_ms (--budget-ms) and gflops "
                           "(--budget-gflops) are within the budgets",
            "timing": None if rungs[0].get("latency_ms") is None else {
                "engine": rungs[0]["timing_engine"], "device": rungs[0]["timing_device"],
                "dtype": rungs[0]["timing_dtype"], "batch": rungs[0]["timing_batch_size"]},
            "device": str(rt.device)}


def _write(out: Path, ctx: AdaptContext, base: dict, results, states, record: dict, overwrite: bool) -> None:
    """The ladder folder, as one unit: base/, rungs/<res>/, ladder.json."""
    _load(ctx, base, None)
    write_ladder(out, ctx.model, ctx.meta, [(r.meta, s.tensors) for r, s in zip(results, states)], record,
                 overwrite=overwrite)


__all__ = ["LadderResult", "adapt_ladder", "check_rungs"]
