"""Inference and evaluation: ``infer`` yields logits, ``evaluate`` reduces them to metrics.

Every image is counted exactly once, also over several processes (each rank evaluates
a disjoint shard and the sums are all-reduced); images that fail to decode are counted
apart and reported, never replaced by other images.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import FixresError
from ..core.options import option
from ..core.progress import notice
from ..core.tables import pct
from ..core.runtime import Dist, Runtime, RuntimeOptions, all_reduce_sum, autocast, gather_lists
from ..data.folder import list_classes, scan_split
from ..data.index import SplitIndex
from ..data.loader import Batch
from ..data.pipeline import eval_batches
from ..data.preprocessing import Preprocessing
from ..data.transforms import Normalizer, check_crop_pct, check_resolution
from ..models.checkpoint import CheckpointMeta
from ..models.labels import Binding, LabelSpace, bind, match_folders
from ..models.sizes import check_input_size, fit_batch
from ..models.sources import ModelSource, at_resolution, open_for_data


TOP5_CLASSES = 5      # with this many classes or fewer, top-5 accuracy is 100% by construction: not reported


@dataclass(frozen=True)
class EvalResult:
    top1: float          # percent
    top5: float | None   # percent; None with 5 classes or fewer (every prediction's top 5 holds the label)
    loss: float          # mean cross-entropy
    n: int               # images evaluated
    n_skipped: int       # images that could not be decoded
    test_res: int
    crop_pct: float
    interpolation: str
    crop_mode: str = "center"
    ece: float | None = None      # expected calibration error, percent (15 equal-width bins of the max probability)
    nll: float | None = None      # mean cross-entropy of the probabilities at ``temperature`` (= loss at 1)
    temperature: float = 1.0      # the logits were divided by this before ece and nll (fitted: --calibrate)

    def row(self) -> dict:
        return asdict(self)


@torch.no_grad()
def infer(model: nn.Module, batches, normalizer: Normalizer, rt: Runtime) -> Iterator[tuple[torch.Tensor, Batch]]:
    """Yield ``(logits, batch)`` for every batch (``logits`` None when no image of it decoded)."""
    model.eval()
    for batch in batches:
        if batch.images is None:
            yield None, batch
            continue
        with autocast(rt.device, rt.amp_dtype):
            logits = model(normalizer(batch.images, rt.device))
        yield logits.float(), batch


ECE_BINS = 15   # Guo et al. (ICML 2017), torchmetrics' default


class Tally:
    """Running sums of correct top-1/top-k, loss and counts, and the calibration histogram (per
    bin of the max probability: count, confidence, correct), kept on the device. ``temperature``
    divides the logits before the calibration figures (not before top-1/top-5/loss);
    ``keep_logits``: keep them (CPU) to fit a temperature on."""

    def __init__(self, device: torch.device, temperature: float = 1.0, keep_logits: bool = False):
        self.sums = torch.zeros(6, dtype=torch.float64, device=device)  # top1, top5, loss, n, skipped, nll@T
        self.bins = torch.zeros(3, ECE_BINS, dtype=torch.float64, device=device)
        self.classes: int | None = None
        self.temperature = temperature
        self.kept: list | None = [] if keep_logits else None

    def add(self, logits: torch.Tensor | None, labels: torch.Tensor, n_skipped: int) -> None:
        self.sums[4] += n_skipped
        if logits is None:
            return
        labels = labels.to(logits.device, non_blocking=True)
        self.classes = logits.shape[1]
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(labels[:, None])
        self.sums[0] += hits[:, 0].sum()
        self.sums[1] += hits.any(dim=1).sum()
        self.sums[2] += F.cross_entropy(logits, labels, reduction="sum").double()
        self.sums[3] += labels.numel()
        scaled = logits / self.temperature
        self.sums[5] += F.cross_entropy(scaled, labels, reduction="sum").double()
        confidence, predicted = scaled.softmax(dim=1).max(dim=1)
        index = (confidence.double() * ECE_BINS).ceil().long().clamp(1, ECE_BINS) - 1   # (lo, hi] bins, as torchmetrics
        self.bins[0].index_add_(0, index, torch.ones_like(confidence, dtype=torch.float64))
        self.bins[1].index_add_(0, index, confidence.double())
        self.bins[2].index_add_(0, index, predicted.eq(labels).double())
        if self.kept is not None:
            self.kept.append((logits.detach().cpu(), labels.cpu()))

    def result(self, dist_env: Dist, **geometry) -> EvalResult:
        top1, top5, loss, n, skipped, nll = all_reduce_sum(self.sums.clone(), dist_env).tolist()
        count, conf, correct = all_reduce_sum(self.bins.clone(), dist_env)
        ece = float((conf - correct).abs().sum() / max(n, 1)) * 100 if n else None
        n_safe = max(n, 1)
        applicable = self.classes is None or self.classes > TOP5_CLASSES
        if dist_env.enabled:   # a rank that saw no image does not know the classes
            known = torch.tensor([self.classes or 0], device=self.sums.device)
            torch.distributed.all_reduce(known, op=torch.distributed.ReduceOp.MAX)
            applicable = int(known.item()) == 0 or int(known.item()) > TOP5_CLASSES
        return EvalResult(100 * top1 / n_safe, 100 * top5 / n_safe if applicable else None, loss / n_safe, int(n),
                          int(skipped), **geometry, ece=ece, nll=nll / n_safe if n else None,
                          temperature=self.temperature)

    def logits(self, dist_env: Dist) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's kept logits and labels (for a temperature fit)."""
        mine = (torch.cat([a for a, _ in self.kept]) if self.kept else torch.zeros(0, self.classes or 0),
                torch.cat([b for _, b in self.kept]) if self.kept else torch.zeros(0, dtype=torch.long))
        parts = gather_lists([mine], dist_env)
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature that minimises the mean cross-entropy of ``logits / T`` (Guo et al.: one
    scalar, fitted by L-BFGS on log T so that it stays positive)."""
    if not len(labels):
        raise FixresError("no image to fit a temperature on")
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    logits, labels = logits.double(), labels.long()
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss
    opt.step(closure)
    return float(log_t.detach().exp())


def evaluate(model: nn.Module, split: SplitIndex, prep: Preprocessing, rt: Runtime, *, batch_size: int = 100,
             label: str | None = None) -> tuple[EvalResult, list]:
    """Top-1, top-5, loss and counts of ``model`` on ``split`` at ``prep``'s test geometry.

    Args:
        label: the progress bar's text (default ``eval@<test_res>``).

    Returns:
        The result and the ``(path, reason)`` of the split's files that could not be read
        (refused when scanned, or failed to decode).
    """
    view = prep.test_view()
    loader = eval_batches(split, view, rt, batch_size=batch_size)
    tally, failed = Tally(rt.device), []
    if rt.dist.is_main:  # files refused when scanned: the same list on every rank, counted once
        tally.add(None, torch.zeros(0, dtype=torch.long), len(split.skipped))
    batches = rt.progress(loader, label or f"eval@{view.test_res}")
    for logits, batch in infer(model, batches, prep.normalizer(rt.channels_last), rt):
        tally.add(logits, batch.labels, len(batch.skipped))
        failed.extend(batch.skipped)
    result = tally.result(rt.dist, test_res=view.test_res, crop_pct=view.crop_pct, interpolation=view.interpolation,
                          crop_mode=view.crop_mode)
    return result, list(split.skipped) + gather_lists(failed, rt.dist)


def load_split(data: str | Path, split: str, labels: Binding | Sequence[str]) -> SplitIndex:
    """Scan ``data/split``, its class folders bound to a model's labels (a :class:`Binding`
    from :func:`fixres.models.sources.open_for_data`, or a checkpoint's class names: the folders must
    then be some or all of them)."""
    root = Path(data)
    if not root.is_dir():
        raise FixresError(f"data directory {root} does not exist")
    if not (root / split).is_dir():
        raise FixresError(f"{root} has no {split}/ directory (expected {root}/{split}/<class>/<images>)")
    folders = list_classes(root / split)
    if not isinstance(labels, Binding):
        labels = bind(LabelSpace(tuple(labels), source="the checkpoint's classes"), folders, str(root / split))
    unknown = [f for f in folders if f not in labels.folder_index]
    if unknown:      # a split holding a class the others did not: bind it the same way, or say which
        extra = match_folders(labels.space, unknown, str(root / split))
        labels = replace(labels, folder_index={**labels.folder_index, **extra})
    return scan_split(root / split, labels.space.names, labels=labels.folder_index)


@dataclass(frozen=True, kw_only=True)
class EvalOptions(RuntimeOptions):
    split: str = option("val", "sub-directory of the dataset to evaluate")
    test_res: Optional[int] = option(None, "test resolution (default: the checkpoint's, or the model's "
                                           "test_input_size)")
    crop_pct: Optional[float] = option(None, "centre-crop fraction (default: the checkpoint's, or the model's "
                                             "test_crop_pct)")
    order_seed: Optional[int] = option(None, "evaluate the images in a random order drawn from this seed (default: "
                                             "sorted by class folder, so a batch holds one class); what a procedure "
                                             "that depends on the batch, such as --tent, needs")

    def __post_init__(self):
        super().__post_init__()
        if self.test_res is not None:
            check_resolution(self.test_res, "test_res")
        if self.crop_pct is not None:
            check_crop_pct(self.crop_pct)


@dataclass(frozen=True)
class Evaluation:
    """What ``fixres eval`` reports: the result, the model's metadata, where it was measured."""

    result: EvalResult
    meta: CheckpointMeta
    model: str                   # the checkpoint path or model name given
    data: str
    split: str
    skipped: tuple = ()
    test_time: dict | None = None   # a test-time adaptation that ran while evaluating (fixres eval --tent)

    def record(self) -> dict:
        m = self.meta
        return {"checkpoint": self.model, "model": m.model, "split": self.split, "classes": m.num_classes,
                "labels": m.label_source or "the checkpoint's classes", **self.result.row(),
                "skipped_files": [{"path": p, "reason": r} for p, r in self.skipped],
                **({"test_time": self.test_time} if self.test_time else {})}

    def text(self) -> str:
        r, m = self.result, self.meta
        mode = f", {r.crop_mode}" if r.crop_mode != "center" else ""
        labels = m.label_source or "the checkpoint's classes"
        return (f"{m.model} on {self.data}/{self.split} at {r.test_res}px (crop_pct {r.crop_pct:g}, "
                f"{r.interpolation}{mode}), {m.num_classes} classes ({labels}): "
                f"top-1 {r.top1:.2f}  top-5 {pct(r.top5)}  loss {r.loss:.4f}  images {r.n}"
                + (f"  skipped {r.n_skipped}" if r.n_skipped else "")
                + (f"\n  adapted while evaluating: Tent, {self.test_time['tent']} (one entropy step per batch of "
                   f"{self.test_time['batch_size']}, lr {self.test_time['lr']:g}, on the gamma/beta of "
                   f"{self.test_time['layers']} normalisation layer(s))" if self.test_time else ""))


def evaluate_checkpoint(checkpoint: "str | Path | ModelSource", data: str | Path, opts: EvalOptions | None = None, *,
                        quiet: bool = True, dist_env: Dist = Dist(),
                        prepare: Callable[[nn.Module], nn.Module] | None = None) -> tuple[EvalResult, CheckpointMeta, list]:
    """Evaluate a model (a checkpoint path, or any :class:`~fixres.models.sources.ModelSource`); the
    geometry defaults to what it records.

    ``opts``: :class:`EvalOptions` (default: its defaults). Under torchrun every rank calls this
    with its ``dist_env``: each evaluates
    a disjoint shard and all get the same totals. Returns the result, the model's metadata
    (its classes: the dataset's only, with ``restrict_labels``) and the skipped files.
    ``prepare``: what is evaluated is ``prepare(model)``, on the device (e.g. a test-time
    adaptation wrapper, :mod:`fixres.adapt.test_time`)."""
    opts = EvalOptions() if opts is None else opts
    opened = open_for_data(at_resolution(checkpoint, opts.test_res), data, [opts.split])
    prep = opened.meta.preprocessing.override("flag", test_res=opts.test_res, crop_pct=opts.crop_pct)
    per_image = check_input_size(opened.model, [prep.test_res])
    index = load_split(data, opts.split, opened.binding)
    if opts.order_seed is not None:
        index = index.shuffled(opts.order_seed)
    rt = opts.runtime(dist_env, quiet)
    batch = fit_batch(per_image, opts.batch_size, rt.device, f"eval at {prep.test_res}px",
                      input_bytes=4 * 3 * prep.test_res ** 2, log=notice if rt.dist.is_main else None)
    model = opened.model.to(rt.device)
    result, skipped = evaluate(model if prepare is None else prepare(model), index, prep, rt, batch_size=batch)
    return result, opened.meta, skipped
