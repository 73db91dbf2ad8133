"""``adapt_checkpoint``: open a checkpoint, adapt it to a test resolution, measure, save.

The flow: open the checkpoint -> choose the layers (:func:`~fixres.adapt.surgery.make_plan`)
-> val accuracy at K_test before -> the method -> val accuracy after -> a checkpoint
directory whose metadata records ``test_res = K_test`` and the whole adaptation report.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import META, CheckpointMeta, find_checkpoint, open_checkpoint, save_checkpoint, versions
from ..config import build, to_dict
from ..data.loader import ImageDataset, Skipped
from ..data.transforms import EvalTransform, TrainTransform
from ..errors import FixresError
from ..evaluate import EvalResult, Preprocess, evaluate, gather_lists
from ..progress import Progress, iterate
from ..rundir import write_json
from ..runtime import Dist, autocast_dtype, barrier, resolve_device
from .data import Images, adapt_transform, adaptation_images, ordered_loader
from .features import build_cache, collect_pooled
from .graph import Split, check_split, split_graph
from .methods import cached_batches, naive_batches, reestimate_bn, train
from .options import AdaptOptions
from .parametric import attach, fit_equaliser, has_equaliser
from .surgery import Plan, make_plan

V2_NOTE = ("--aug v2 draws a new crop, flip and jitter every epoch, so the frozen layers' output changes every "
           "epoch: full-network loop (caching each draw would cost the same forward passes)")


@dataclass(frozen=True)
class AdaptResult:
    model: nn.Module          # the adapted model, in eval mode, on the adaptation device
    meta: CheckpointMeta      # its metadata (as saved when ``out`` was given)
    before: EvalResult        # val at K_test before adaptation
    after: EvalResult         # val at K_test after
    seconds: float
    report: dict              # = meta.adaptation = DIR/adapt.json
    out: Path | None


def adapt_checkpoint(checkpoint: str | Path, data: str | Path, *, test_res: int, method: str | None = None,
                     out: str | Path | None = None, epochs: int | None = None, batch_size: int | None = None,
                     lr: float | None = None, step_epochs: int | None = None, aug: str | None = None,
                     label_smoothing: float | None = None, train_bn_affine: bool | None = None,
                     all_bn: bool | None = None, images: int | None = None,
                     bn_module: str | tuple[str, ...] | None = None, classifier_module: str | None = None,
                     device: str | None = None, amp: str | None = None, workers: int | None = None,
                     cache: bool | None = None, seed: int | None = None, overwrite: bool = False,
                     quiet: bool = False, before: EvalResult | None = None,
                     dist_env: Dist = Dist()) -> AdaptResult:
    """Adapt a checkpoint to ``test_res`` (see :class:`AdaptOptions` for every setting;
    ``None`` takes its default: method fixres, 30 epochs, batch 64, lr 1e-3 x batch/64, v1).

    Args:
        checkpoint: run directory, checkpoint directory or model.safetensors file.
        data: dataset directory with train/ (adaptation images) and val/ (before/after).
        out: checkpoint directory to write (must not exist or be empty; ``overwrite``
            replaces a fixres checkpoint there). None: nothing is written.
        quiet: no progress bars and no per-epoch lines.
        before: the unadapted checkpoint's val result at ``test_res`` if already measured
            (e.g. by a sweep): it is recorded instead of being evaluated again.
        dist_env: under torchrun, every rank calls this: the passes over the images are
            shared between ranks, the result is the same as one process's, rank 0 writes.
    """
    if isinstance(bn_module, str):
        bn_module = (bn_module,)
    given = dict(test_res=test_res, method=method, epochs=epochs, batch_size=batch_size, lr=lr,
                 step_epochs=step_epochs, aug=aug, label_smoothing=label_smoothing, train_bn_affine=train_bn_affine,
                 all_bn=all_bn, images=images, bn_module=bn_module, classifier_module=classifier_module,
                 device=device, amp=amp, workers=workers, cache=cache, seed=seed)
    opts = build(AdaptOptions, {k: v for k, v in given.items() if v is not None})
    return adapt(checkpoint, data, opts, out=out, overwrite=overwrite, quiet=quiet, before=before, dist_env=dist_env)


def _check_out(out: Path, overwrite: bool, source: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FixresError(f"output {out} exists and is not a directory")
    if out.exists() and out.resolve() == source.resolve():
        raise FixresError(f"--out {out} is the checkpoint being adapted; choose another directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FixresError(f"output directory {out} already exists and is not empty "
                              "(use --overwrite to replace a fixres checkpoint there, or another --out)")
        if not (out / META).is_file():
            raise FixresError(f"refusing to overwrite {out}: it is not a fixres checkpoint directory (no {META})")
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise FixresError(f"cannot write to {parent}")


def adapt(checkpoint: str | Path, data: str | Path, opts: AdaptOptions, *, out: str | Path | None = None,
          overwrite: bool = False, quiet: bool = False, before: EvalResult | None = None,
          dist_env: Dist = Dist()) -> AdaptResult:
    """:func:`adapt_checkpoint` with validated options."""
    t_start = time.perf_counter()
    quiet = quiet or not dist_env.is_main
    log = (lambda text: None) if quiet else Progress.write
    source = find_checkpoint(checkpoint)
    out = Path(out) if out is not None else None
    if out is not None:
        _check_out(out, overwrite, source)
    model, meta = open_checkpoint(source)
    if opts.method == "parametric" and has_equaliser(model):
        raise FixresError(f"{source} is already equalised (method parametric); adapt its source checkpoint instead")
    imgs = adaptation_images(data, meta, opts.images, opts.seed)
    if opts.trains and len(imgs.train) < opts.batch_size:
        raise FixresError(f"{len(imgs.train)} adaptation images are fewer than one batch of {opts.batch_size}; "
                          "lower --batch-size")
    device = resolve_device(opts.device, dist_env)
    amp_dtype = autocast_dtype(opts.amp, device)
    torch.manual_seed(opts.seed)
    model.to(device)
    plan = make_plan(model, opts.method, train_bn_affine=opts.train_bn_affine, all_bn=opts.all_bn,
                     bn_module=opts.bn_module, classifier_module=opts.classifier_module)
    for note in plan.notes:
        log(note)
    ctx = _Context(model, meta, plan, imgs, opts, device, amp_dtype, Preprocess(meta.mean, meta.std), log, quiet,
                   dist_env)

    t0 = time.perf_counter()
    if before is None:
        before = ctx.evaluate("before")
    elif (before.test_res, before.crop_pct, before.interpolation) != (opts.test_res, meta.crop_pct, meta.interpolation):
        raise ValueError(f"the given 'before' result was measured at another geometry ({before.test_res}px, "
                         f"crop {before.crop_pct}, {before.interpolation})")
    eval_seconds = time.perf_counter() - t0
    info = {"trains": _train_method, "bn": _bn_method, "parametric": _parametric_method}[
        "trains" if opts.trains else opts.method](ctx)
    t0 = time.perf_counter()
    after = ctx.evaluate("after")
    eval_seconds += time.perf_counter() - t0
    seconds = time.perf_counter() - t_start
    report = _report(ctx, source, before, after, info, seconds, eval_seconds)
    new_meta = meta.replace(test_res=opts.test_res, adaptation=report,
                            metrics={f"val_{k}": v for k, v in after.row().items()})
    if out is not None and dist_env.is_main:
        new_meta = save_checkpoint(out, model, new_meta)
        write_json(out / "adapt.json", {**report, "checkpoint": str(out), "weights_sha256": new_meta.weights_sha256})
    barrier(dist_env)
    return AdaptResult(model, new_meta, before, after, seconds, report, out)


@dataclass
class _Context:
    model: nn.Module
    meta: CheckpointMeta
    plan: Plan
    imgs: Images
    opts: AdaptOptions
    device: torch.device
    amp_dtype: torch.dtype | None
    preprocess: Preprocess
    log: object
    quiet: bool
    dist_env: Dist = Dist()

    def evaluate(self, when: str) -> EvalResult:
        k = self.opts.test_res
        result, _ = evaluate(self.model, self.imgs.val, test_res=k, crop_pct=self.meta.crop_pct,
                             interpolation=self.meta.interpolation, preprocess=self.preprocess, device=self.device,
                             batch_size=self.opts.batch_size, workers=self.opts.workers, amp_dtype=self.amp_dtype,
                             dist_env=self.dist_env,
                             progress=lambda it: iterate(it, f"val@{k} {when}", enabled=not self.quiet, total=len(it)))
        self.log(f"{when}: val@{k} top-1 {result.top1:.2f}  top-5 {result.top5:.2f}  loss {result.loss:.4f}  "
                 f"({result.n} images)")
        return result

    def loader(self, transform, seed: int | None = None):
        return ordered_loader(self.imgs.train, transform, self.opts.batch_size, self.opts.workers, seed=seed,
                              pin_memory=self.device.type == "cuda", dist_env=self.dist_env)

    def progress(self, loader, what: str):
        return iterate(loader, what, enabled=not self.quiet, total=len(loader))


class _Inputs(nn.Module):
    """The trivial bottom when every layer adapts (``full``): the normalised images."""

    def forward(self, x):
        return (x,)


def _probe_batch(ctx: _Context, transform) -> torch.Tensor | None:
    dataset, images = ImageDataset(ctx.imgs.train, transform), []
    for i in range(len(dataset)):
        item = dataset[i]
        if not isinstance(item, Skipped):
            images.append(item[0])
            if len(images) == 2:
                break
    return ctx.preprocess(torch.stack(images), ctx.device) if images else None


def _train_method(ctx: _Context) -> dict:
    """fixres / head / full: SGD on the top, on cached features when possible."""
    opts, model, k = ctx.opts, ctx.model, ctx.opts.test_res
    transform = adapt_transform(opts.aug, k, ctx.meta.crop_pct, ctx.meta.interpolation)
    t0 = time.perf_counter()
    forward, batches, cache, why, crossing = None, None, None, "", ()
    if not opts.cache:
        why = "--no-cache: full-network loop"
    elif opts.aug != "v1":
        why = V2_NOTE
    else:
        split, why = ((Split(_Inputs(), model, ("input",)), "") if "" in ctx.plan.adapted
                      else split_graph(model, ctx.plan.adapted))
        probe = _probe_batch(ctx, transform) if split is not None else None
        if split is not None and probe is not None:
            why = check_split(model, split, probe)
        if split is not None and not why:
            cache, why = build_cache(split.bottom, ctx.progress(ctx.loader(transform), "caching features"),
                                     len(ctx.imgs.train), ctx.preprocess, ctx.device, ctx.amp_dtype, ctx.dist_env)
        if cache is not None:
            forward, crossing = split.top, split.crossing
            batches = cached_batches(cache, opts.batch_size, opts.seed, ctx.device)
        else:
            why = f"full-network loop: {why}"
    skipped: dict = {}
    if forward is None:
        ctx.log(why)
        forward = model
        batches = naive_batches(ctx.imgs.train, transform, opts.batch_size, opts.seed, opts.workers,
                                ctx.preprocess, ctx.device, skipped, ctx.dist_env)
    else:
        skipped.update(cache.skipped)
        ctx.log(f"cached {int(cache.valid.sum())} images' features of the frozen layers "
                f"({cache.nbytes / 2**20:.1f} MiB on {cache.storage}) in {time.perf_counter() - t0:.1f}s")
    features_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    # On cached features every rank holds the whole cache and takes identical steps; the
    # full-network loop shards every batch over the ranks and averages the gradients.
    history = train(model, ctx.plan, forward, batches, opts, ctx.device, ctx.amp_dtype, ctx.log,
                    sharded=ctx.dist_env if cache is None else Dist())
    if cache is None and ctx.dist_env.enabled:
        skipped.update(dict(gather_lists(list(skipped.items()), ctx.dist_env)))
    info = {"execution": "cached" if cache is not None else "naive", "execution_note": why,
            "history": history, "epochs": opts.epochs, "lr": opts.base_lr,
            "images_skipped": len(skipped), "images_used": len(ctx.imgs.train) - len(skipped),
            "seconds_features": round(features_seconds, 3), "seconds_train": round(time.perf_counter() - t0, 3)}
    if cache is not None:
        info["cache"] = {"bytes": cache.nbytes, "storage": str(cache.storage), "crossing": list(crossing)}
    return info


def _bn_method(ctx: _Context) -> dict:
    """Label-free: exact batch-norm statistics at K_test, one pass, no gradient."""
    k, t0 = ctx.opts.test_res, time.perf_counter()
    loader = ctx.loader(EvalTransform(k, ctx.meta.crop_pct, ctx.meta.interpolation))
    used, skipped = reestimate_bn(ctx.model, ctx.plan.batch_norms, loader, ctx.preprocess, ctx.device,
                                  ctx.amp_dtype, ctx.quiet, ctx.dist_env)
    ctx.log(f"re-estimated {len(ctx.plan.batch_norms)} batch-norm(s) on {used} images at {k}px")
    return {"execution": "one pass", "execution_note": "", "epochs": 0, "images_used": used,
            "images_skipped": len(skipped), "seconds_features": round(time.perf_counter() - t0, 3),
            "seconds_train": 0.0}


def _parametric_method(ctx: _Context) -> dict:
    """Label-free: fit the pooled features' laws at the train and the test geometry, equalise."""
    meta, k, t0 = ctx.meta, ctx.opts.test_res, time.perf_counter()
    train_tf = TrainTransform(meta.train_res, interpolation=meta.interpolation)
    test_tf = EvalTransform(k, meta.crop_pct, meta.interpolation)
    args = (ctx.model, ctx.plan.classifier)
    rest = (ctx.preprocess, ctx.device, ctx.amp_dtype, ctx.dist_env)
    train_features, skipped = collect_pooled(*args, ctx.progress(ctx.loader(train_tf, seed=ctx.opts.seed),
                                                                 f"features@{meta.train_res} train"), *rest)
    test_features, _ = collect_pooled(*args, ctx.progress(ctx.loader(test_tf), f"features@{k} test"), *rest)
    if not len(train_features):
        raise FixresError("no adaptation image could be decoded")
    equaliser = fit_equaliser(train_features, test_features)
    attach(ctx.model, ctx.plan.classifier, equaliser)
    for name, law in (("train", equaliser.train), ("test", equaliser.test)):
        ctx.log(f"F_{name}: Frechet mu {law.mu:.4g} sigma {law.sigma:.4g} (xi {equaliser.xi}), "
                f"{100 * law.p0:.1f}% of values <= 0")
    return {"execution": "two passes", "execution_note": f"train geometry: RandomResizedCrop({meta.train_res}, "
            "scale 0.08-1) + flip (fixres train defaults)", "epochs": 0, "images_used": len(train_features),
            "images_skipped": len(skipped), "equaliser": equaliser.record(ctx.plan.classifier),
            "seconds_features": round(time.perf_counter() - t0, 3), "seconds_train": 0.0}


def _report(ctx: _Context, source: Path, before: EvalResult, after: EvalResult, info: dict, seconds: float,
            eval_seconds: float) -> dict:
    meta, opts = ctx.meta, ctx.opts
    keep = ("top1", "top5", "loss", "n", "n_skipped")
    report = {
        "method": opts.method, "test_res": opts.test_res, "crop_pct": meta.crop_pct,
        "interpolation": meta.interpolation, "options": to_dict(opts),
        "source": {"checkpoint": str(source), "weights_sha256": meta.weights_sha256, "model": meta.model,
                   "train_res": meta.train_res, "test_res": meta.test_res},
        "layers": ctx.plan.row(), "notes": list(ctx.plan.notes),
        "execution": info.pop("execution"), "execution_note": info.pop("execution_note"),
        "epochs": info.pop("epochs"),
        "images": {"used": info.pop("images_used"), "skipped": info.pop("images_skipped"),
                   "available": ctx.imgs.available, "held_out": ctx.imgs.held_out},
        "before": {k: getattr(before, k) for k in keep}, "after": {k: getattr(after, k) for k in keep},
        "seconds": {"total": round(seconds, 3), "features": info.pop("seconds_features"),
                    "train": info.pop("seconds_train"), "eval": round(eval_seconds, 3)},
        "device": str(ctx.device), "versions": versions(),
        **info,
    }
    if "equaliser" not in report and (meta.adaptation or {}).get("equaliser"):
        report["equaliser"] = meta.adaptation["equaliser"]   # still applied: carried over
    if meta.adaptation:
        report["source_adaptation"] = {k: meta.adaptation.get(k) for k in ("method", "test_res", "source")}
    return report
