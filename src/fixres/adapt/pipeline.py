"""``adapt_checkpoint``: open a checkpoint, adapt it to a test resolution, measure, save.

The flow: open the checkpoint -> choose the layers (:func:`~fixres.adapt.surgery.make_plan`)
-> val accuracy at K_test before -> the method -> val accuracy after -> a checkpoint
directory whose metadata records ``test_res = K_test`` and the whole adaptation report.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.errors import FixresError
from ..core.options import to_dict
from ..core.progress import notice
from ..core.rundir import prepare_run_dir, write_json
from ..core.tables import pct
from ..core.runtime import Dist, Runtime, barrier, gather_lists
from ..data.loader import ImageDataset, Skipped
from ..data.pipeline import ordered_batches
from ..data.preprocessing import Preprocessing
from ..data.transforms import Normalizer
from ..measure.infer import EvalResult, evaluate
from ..models.checkpoint import META, CheckpointMeta, find_checkpoint, save_checkpoint, versions
from ..models.equaliser import attach, has_equaliser
from ..models.pooled import collect_pooled
from ..models.sizes import check_input_size, fit_batch
from ..models.sources import ModelSource, Opened, as_source, open_for_data
from .data import Images, adapt_transform, adaptation_images, unlabelled_images
from .features import build_cache
from .graph import Split, check_split, split_graph
from .methods import NaiveBatches, cached_batches, reestimate_bn, train
from .options import AdaptOptions
from .parametric import fit_equaliser
from .surgery import Plan, make_plan
from .tent import tent

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

    def record(self) -> dict:
        """What ``fixres adapt --json`` prints (adapt.json)."""
        return {**self.report, "checkpoint": str(self.out), "weights_sha256": self.meta.weights_sha256}

    def text(self) -> str:
        r = self.report
        how = f"{r['execution']}, {r['epochs']} epochs, " if r["epochs"] else f"{r['execution']}, "
        return (f"{self.meta.model} adapted to {r['test_res']}px with {r['method']} ({how}{r['images']['used']} "
                f"images) in {r['seconds']['total']:.1f}s: val top-1 {r['before']['top1']:.2f} -> "
                f"{r['after']['top1']:.2f}, top-5 {pct(r['before']['top5'])} -> {pct(r['after']['top5'])} "
                f"({r['after']['n']} images); checkpoint: {self.out}")


def check_label_coverage(opts: AdaptOptions, imgs: Images, opened: Opened) -> None:
    """Training the classifier on images of SOME of its classes would teach it never to predict
    the others: the training methods need every class of the label space among the training
    images, or ``restrict_labels`` (the classifier then keeps the dataset's classes only)."""
    counts = imgs.train.class_counts()
    present = sum(1 for n in counts if n)
    if not opts.trains or present >= opened.meta.num_classes:
        return
    root = Path(imgs.train.root)
    if opened.binding is not None and opened.binding.restricted:
        missing = [name for name, n in zip(opened.meta.class_names, counts) if not n]
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise FixresError(f"--method {opts.method} trains the classifier: the labels kept ({opened.meta.num_classes}, "
                          f"the classes of train/ and val/ together, or --valid-labels) include {len(missing)} "
                          f"without a training image in {root} ({shown}); give train/ a folder for each, or use "
                          "--method bn or parametric (label-free)")
    raise FixresError(f"--method {opts.method} trains the classifier: {root} holds {present} of the model's "
                      f"{opened.meta.num_classes} classes; add --restrict-labels (the adapted checkpoint then "
                      "predicts those classes only), or use --method bn or parametric (label-free)")


def check_adapt_out(out: str | Path, source: Path | None, overwrite: bool) -> Path:
    """Validate (and create) the output checkpoint directory before any work; an existing one
    is replaced atomically only when the adapted checkpoint is saved."""
    out = Path(out)
    if source is not None and out.exists() and out.resolve() == source.resolve():
        raise FixresError(f"--out {out} is the checkpoint being adapted; choose another directory")
    return prepare_run_dir(out, overwrite=overwrite, marker=META, what="checkpoint directory", clear=False,
                           keep=False)


def adapt_checkpoint(checkpoint: "str | Path | ModelSource", data: str | Path, opts: AdaptOptions, *,
                     out: str | Path | None = None, overwrite: bool = False, quiet: bool = False,
                     before: EvalResult | None = None, dist_env: Dist = Dist()) -> AdaptResult:
    """Adapt a checkpoint to a test resolution (``opts.test_res``).

    Args:
        checkpoint: a checkpoint path (run directory, checkpoint directory, model.safetensors)
            or any :class:`~fixres.models.sources.ModelSource` (a model someone else trained: its
            classes are bound to the dataset's folders; with ``restrict_labels`` the adapted
            checkpoint keeps the dataset's classes only).
        data: dataset directory with train/ (adaptation images) and val/ (before/after).
        opts: :class:`AdaptOptions` (its ``test_res`` is required; the defaults: method fixres,
            30 epochs, batch 64, lr 1e-3 x batch/64, v1).
        out: checkpoint directory to write (must not exist or be empty; ``overwrite``
            replaces a fixres checkpoint there). Checked before any work. None: nothing is written.
        quiet: no progress bars and no per-epoch lines.
        before: the unadapted checkpoint's val result at ``test_res`` if already measured
            (e.g. by a sweep): it is recorded instead of being evaluated again.
        dist_env: under torchrun, every rank calls this: the passes over the images are
            shared between ranks, the result is the same as one process's, rank 0 writes.
    """
    t_start = time.perf_counter()
    rt = opts.runtime(dist_env, quiet)
    model_source = as_source(checkpoint)
    source = find_checkpoint(model_source.checkpoint) if model_source.checkpoint else None
    if out is not None and dist_env.is_main:
        out = check_adapt_out(out, source, overwrite)
    ctx = prepare_adaptation(model_source, data, opts, rt)
    before, eval_seconds = ctx.before(before)
    info = {"trains": train_method, "bn": bn_method, "parametric": parametric_method, "tent": tent_method}[
        "trains" if opts.trains else opts.method](ctx)
    t0 = time.perf_counter()
    after = ctx.evaluate("after")
    eval_seconds += time.perf_counter() - t0
    seconds = time.perf_counter() - t_start
    report = adaptation_report(ctx, ctx.name, before, after, info, seconds, eval_seconds)
    new_meta = ctx.meta.replace(preprocessing=ctx.prep, adaptation=report,
                                metrics={f"val_{k}": v for k, v in after.row().items()})
    if out is not None and dist_env.is_main:
        new_meta = save_checkpoint(out, ctx.model, new_meta)
    result = AdaptResult(ctx.model, new_meta, before, after, seconds, report, None if out is None else Path(out))
    if out is not None and dist_env.is_main:
        write_json(Path(out) / "adapt.json", result.record())
    barrier(dist_env)
    return result


def prepare_adaptation(model_source: ModelSource, data: str | Path, opts: AdaptOptions, rt: Runtime,
             rungs: tuple[int, ...] = ()) -> "AdaptContext":
    """Open the model on the data's folders, check what the adaptation needs, choose its layers.
    ``rungs``: the resolutions of a ladder, every one checked (its passes hold all at once)."""
    opened = open_for_data(model_source, data, ["val"] if opts.unlabelled else ["train", "val"])
    model, meta, name = opened.model, opened.meta, opened.name
    if opts.method == "parametric" and has_equaliser(model):
        raise FixresError(f"{name} is already equalised (method parametric); adapt its source checkpoint instead")
    resolutions = list(rungs) or [opts.test_res]
    per_image = check_input_size(model, [*resolutions, *([meta.preprocessing.train_res]
                                                         if opts.method == "parametric" else [])])
    pass_batch = _pass_batch(per_image, opts, rt, resolutions)
    imgs = (unlabelled_images(opts.unlabelled, data, meta, opts.images, opts.seed, opened.binding)
            if opts.unlabelled else adaptation_images(data, meta, opts.images, opts.seed, opened.binding))
    check_label_coverage(opts, imgs, opened)
    if (opts.trains or opts.method == "tent") and len(imgs.train) < opts.batch_size:
        raise FixresError(f"{len(imgs.train)} adaptation images are fewer than one batch of {opts.batch_size}; "
                          "lower --batch-size")
    torch.manual_seed(opts.seed)
    model.to(rt.device)
    plan = make_plan(model, opts.method, train_bn_affine=opts.train_bn_affine, all_bn=opts.all_bn,
                     bn_module=opts.bn_module, classifier_module=opts.classifier_module)
    for note in plan.notes:
        rt.log(note)
    prep = meta.preprocessing.override("adaptation", test_res=opts.test_res, crop_pct=opts.crop_pct)
    return AdaptContext(model, meta, prep, plan, imgs, opts, rt, name, pass_batch)


def _pass_batch(per_image: int, opts: AdaptOptions, rt: Runtime, resolutions: list[int]) -> int:
    """The batch of the passes whose result does not depend on it (evaluation, feature caching,
    statistics): lowered to fit the memory available. A full-network training loop's batch is
    the optimisation's own: refused, with the batch that fits, rather than changed."""
    whole_network = opts.trains and (opts.method == "full" or opts.aug != "v1" or not opts.cache)
    fits = fit_batch(per_image, opts.batch_size, rt.device, f"adapt at {', '.join(map(str, resolutions))}px",
                     input_bytes=4 * 3 * sum(r * r for r in resolutions),
                     log=notice if rt.dist.is_main and not whole_network else None)
    if fits < opts.batch_size and whole_network:
        raise FixresError(f"--method {opts.method} trains the whole network on batches of {opts.batch_size} at "
                          f"{opts.test_res}px, which do not fit in memory; --batch-size {fits} fits (the result "
                          "depends on the batch, so fixres does not lower it by itself)")
    return fits


@dataclass
class AdaptContext:
    model: nn.Module
    meta: CheckpointMeta
    prep: Preprocessing        # the checkpoint's, at the adaptation's test resolution
    plan: Plan
    imgs: Images
    opts: AdaptOptions
    rt: Runtime
    name: str                  # the model's, as the report names its source
    pass_batch: int            # the batch of the passes that do not train (fits in memory)

    def before(self, given: EvalResult | None) -> tuple[EvalResult, float]:
        """Val before adaptation (``given`` when measured already, at the same geometry) and its seconds."""
        t0, prep = time.perf_counter(), self.prep
        if given is None:
            return self.evaluate("before"), time.perf_counter() - t0
        if (given.test_res, given.crop_pct, given.interpolation) != (prep.test_res, prep.crop_pct, prep.interpolation):
            raise ValueError(f"the given 'before' result was measured at another geometry ({given.test_res}px, "
                             f"crop {given.crop_pct}, {given.interpolation})")
        return given, 0.0

    @property
    def normalizer(self) -> Normalizer:
        return self.prep.normalizer()

    def evaluate(self, when: str) -> EvalResult:
        k = self.prep.test_res
        result, _ = evaluate(self.model, self.imgs.val, self.prep, self.rt, batch_size=self.pass_batch,
                             label=f"val@{k} {when}")
        self.rt.log(f"{when}: val@{k} top-1 {result.top1:.2f}  top-5 {pct(result.top5)}  loss {result.loss:.4f}  "
                    f"({result.n} images)")
        return result

    def loader(self, transform, seed: int | None = None):
        return ordered_batches(self.imgs.train, transform, self.rt, batch_size=self.pass_batch, seed=seed)


class _Inputs(nn.Module):
    """The trivial bottom when every layer adapts (``full``): the normalised images."""

    def forward(self, x):
        return (x,)


def _probe_batch(ctx: AdaptContext, transform) -> torch.Tensor | None:
    dataset, images = ImageDataset(ctx.imgs.train, transform), []
    for i in range(len(dataset)):
        item = dataset[i]
        if not isinstance(item, Skipped):
            images.append(item[0])
            if len(images) == 2:
                break
    return ctx.normalizer(torch.stack(images), ctx.rt.device) if images else None


def train_method(ctx: AdaptContext) -> dict:
    """fixres / head / full: SGD on the top, on cached features when possible."""
    t0 = time.perf_counter()
    split, why = trainable_split(ctx)
    cache = None
    if split is not None:
        loader = ctx.rt.progress(ctx.loader(adapt_transform(ctx.opts.aug, ctx.prep)), "caching features")
        cache, why = build_cache(split.bottom, loader, len(ctx.imgs.train), ctx.normalizer, ctx.rt)
        why = "" if cache is not None else f"full-network loop: {why}"
    return train_top(ctx, split if cache is not None else None, cache, why, time.perf_counter() - t0)


def trainable_split(ctx: AdaptContext) -> tuple[Split | None, str]:
    """The cut between the frozen layers and the adapted ones for training on cached features
    (checked on two images at the context's resolution), or None and why the whole network runs."""
    opts, model = ctx.opts, ctx.model
    if not opts.cache:
        return None, "--no-cache: full-network loop"
    if opts.aug != "v1":
        return None, V2_NOTE
    split, why = ((Split(_Inputs(), model, ("input",)), "") if "" in ctx.plan.adapted
                  else split_graph(model, ctx.plan.adapted))
    probe = _probe_batch(ctx, adapt_transform(opts.aug, ctx.prep)) if split is not None else None
    if split is not None and probe is not None:
        why = check_split(model, split, probe)
    return (split, "") if split is not None and not why else (None, f"full-network loop: {why}")


def train_top(ctx: AdaptContext, split: Split | None, cache, why: str, features_seconds: float) -> dict:
    """Train the plan's layers: the split's top on ``cache``, or (no cache) the whole network on
    images decoded every epoch. Returns the report's execution part."""
    opts, model, rt = ctx.opts, ctx.model, ctx.rt
    skipped: dict = {}
    if cache is None:
        rt.log(why)
        forward = model
        batches = NaiveBatches(ctx.imgs.train, adapt_transform(opts.aug, ctx.prep), opts.batch_size, opts.seed,
                               ctx.normalizer, rt, skipped)
    else:
        forward, batches = split.top, cached_batches(cache, opts.batch_size, opts.seed, rt.device)
        skipped.update(cache.skipped)
        rt.log(f"cached {int(cache.valid.sum())} images' features of the frozen layers "
               f"({cache.nbytes / 2**20:.1f} MiB on {cache.storage}) in {features_seconds:.1f}s")
    t0 = time.perf_counter()
    # On cached features every rank holds the whole cache and takes identical steps; the
    # full-network loop shards every batch over the ranks and averages the gradients.
    with batches if cache is None else contextlib.nullcontext():   # the full-network loop's workers stop after it
        history = train(model, ctx.plan, forward, batches, opts, rt, sharded=rt.dist if cache is None else Dist())
    if cache is None and rt.dist.enabled:
        skipped.update(dict(gather_lists(list(skipped.items()), rt.dist)))
    info = {"execution": "cached" if cache is not None else "naive", "execution_note": why,
            "history": history, "epochs": opts.epochs, "lr": opts.base_lr,
            "images_skipped": len(skipped), "images_used": len(ctx.imgs.train) - len(skipped),
            "seconds_features": round(features_seconds, 3), "seconds_train": round(time.perf_counter() - t0, 3)}
    if cache is not None:
        info["cache"] = {"bytes": cache.nbytes, "storage": str(cache.storage), "crossing": list(split.crossing)}
    return info


def bn_method(ctx: AdaptContext) -> dict:
    """Label-free: exact batch-norm statistics at K_test, one pass, no gradient."""
    k, t0 = ctx.prep.test_res, time.perf_counter()
    used, skipped = reestimate_bn(ctx.model, ctx.plan.batch_norms, ctx.loader(ctx.prep.test_view()), ctx.normalizer,
                                  ctx.rt)
    ctx.rt.log(f"re-estimated {len(ctx.plan.batch_norms)} batch-norm(s) on {used} images at {k}px")
    return {"execution": "one pass", "execution_note": "", "epochs": 0, "images_used": used,
            "images_skipped": len(skipped), "seconds_features": round(time.perf_counter() - t0, 3),
            "seconds_train": 0.0}


def tent_method(ctx: AdaptContext) -> dict:
    """Label-free, on the unlabelled images: Tent's entropy minimisation (see
    :mod:`fixres.adapt.tent`), then the batch-norms' running statistics from those images."""
    opts, rt, t0 = ctx.opts, ctx.rt, time.perf_counter()
    skipped: dict = {}
    with NaiveBatches(ctx.imgs.train, ctx.prep.test_view(), opts.batch_size, opts.seed, ctx.normalizer, rt,
                      skipped) as batches:
        history = tent(ctx.model, ctx.plan, batches, opts, rt)
    seconds_train = time.perf_counter() - t0
    if rt.dist.enabled:
        skipped.update(dict(gather_lists(list(skipped.items()), rt.dist)))
    used = history[-1]["images"]
    if ctx.plan.batch_norms:
        used, _ = reestimate_bn(ctx.model, ctx.plan.batch_norms, ctx.loader(ctx.prep.test_view()), ctx.normalizer, rt)
        rt.log(f"running statistics of {len(ctx.plan.batch_norms)} batch-norm(s) from {used} unlabelled images")
    note = (f"Tent's online adaptation over the unlabelled images ({opts.tent_passes} pass(es), batches of "
            f"{opts.batch_size} in a seeded order, incomplete last batch dropped), from the given checkpoint; "
            "batch-norm running statistics then set to the unlabelled images' (not episodic: for that, at test time, "
            "fixres eval --tent episodic)")
    return {"execution": "tent", "execution_note": note, "epochs": 0, "history": history, "lr": opts.base_lr,
            "tent_passes": opts.tent_passes, "images_used": used, "images_skipped": len(skipped),
            "seconds_features": 0.0, "seconds_train": round(seconds_train, 3),
            "seconds_statistics": round(time.perf_counter() - t0 - seconds_train, 3)}


def parametric_method(ctx: AdaptContext) -> dict:
    """Label-free: fit the pooled features' laws at the train geometry (the run's own
    RandomResizedCrop settings, from its preprocessing record) and at the test geometry, equalise."""
    prep, rt, t0 = ctx.prep, ctx.rt, time.perf_counter()
    train_tf, test_tf = prep.train_view(), prep.test_view()
    args = (ctx.model, ctx.plan.classifier)
    train_features, skipped = collect_pooled(
        *args, rt.progress(ctx.loader(train_tf, seed=ctx.opts.seed), f"features@{prep.train_res} train"),
        ctx.normalizer, rt)
    test_features, _ = collect_pooled(*args, rt.progress(ctx.loader(test_tf), f"features@{prep.test_res} test"),
                                      ctx.normalizer, rt)
    if not len(train_features):
        raise FixresError("no adaptation image could be decoded")
    equaliser = fit_equaliser(train_features, test_features)
    attach(ctx.model, ctx.plan.classifier, equaliser)
    for name, law in (("train", equaliser.train), ("test", equaliser.test)):
        rt.log(f"F_{name}: Frechet mu {law.mu:.4g} sigma {law.sigma:.4g} (xi {equaliser.xi}), "
               f"{100 * law.p0:.1f}% of values <= 0")
    note = (f"train geometry: RandomResizedCrop({train_tf.size}, scale {train_tf.scale[0]:g}-{train_tf.scale[1]:g}, "
            f"ratio {train_tf.ratio[0]:.3g}-{train_tf.ratio[1]:.3g}) + flip {train_tf.hflip:g}"
            + (f" + jitter {train_tf.color_jitter:g}" if train_tf.color_jitter else "")
            + f" (settings from: {prep.source_of('scale')})")
    return {"execution": "two passes", "execution_note": note, "epochs": 0, "images_used": len(train_features),
            "images_skipped": len(skipped), "equaliser": equaliser.record(ctx.plan.classifier),
            "train_crops": {k: prep.to_dict()[k] for k in ("train_res", "scale", "ratio", "hflip", "color_jitter")},
            "seconds_features": round(time.perf_counter() - t0, 3), "seconds_train": 0.0}


def adaptation_report(ctx: AdaptContext, source: str, before: EvalResult, after: EvalResult, info: dict,
                      seconds: float, eval_seconds: float) -> dict:
    meta, opts, prep = ctx.meta, ctx.opts, ctx.prep
    keep = ("top1", "top5", "loss", "n", "n_skipped")
    report = {
        "method": opts.method, "test_res": prep.test_res, "crop_pct": prep.crop_pct,
        "interpolation": prep.interpolation, "options": to_dict(opts),
        "source": {"checkpoint": str(source), "weights_sha256": meta.weights_sha256, "model": meta.model,
                   "train_res": meta.preprocessing.train_res, "test_res": meta.preprocessing.test_res},
        "layers": ctx.plan.row(), "notes": list(ctx.plan.notes),
        "execution": info.pop("execution"), "execution_note": info.pop("execution_note"),
        "epochs": info.pop("epochs"),
        "images": {"used": info.pop("images_used"), "skipped": info.pop("images_skipped"),
                   "available": ctx.imgs.available, "held_out": ctx.imgs.held_out},
        "before": {k: getattr(before, k) for k in keep}, "after": {k: getattr(after, k) for k in keep},
        "seconds": {"total": round(seconds, 3), "features": info.pop("seconds_features"),
                    "train": info.pop("seconds_train"), "eval": round(eval_seconds, 3)},
        "device": str(ctx.rt.device), "versions": versions(),
        **info,
    }
    if ctx.imgs.unlabelled:
        report["unlabelled"] = ctx.imgs.unlabelled
    if "equaliser" not in report and (meta.adaptation or {}).get("equaliser"):
        report["equaliser"] = meta.adaptation["equaliser"]   # still applied: carried over
    if meta.adaptation:
        report["source_adaptation"] = {k: meta.adaptation.get(k) for k in ("method", "test_res", "source")}
    return report
