"""Inference and evaluation: ``infer`` yields logits, ``evaluate`` reduces them to metrics.

Every image is counted exactly once, also over several processes (each rank evaluates
a disjoint shard and the sums are all-reduced); images that fail to decode are counted
apart and reported, never replaced by other images.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointMeta, open_checkpoint
from .data.folder import SplitIndex, check_same_classes, list_classes, scan_split
from .data.loader import Batch, EvalShard, ImageDataset, make_loader
from .data.transforms import EvalTransform, normalize
from .errors import FixresError
from .progress import iterate
from .runtime import Dist, all_reduce_sum, autocast, autocast_dtype, resolve_device


@dataclass(frozen=True)
class Preprocess:
    """What turns a uint8 batch into model input on the device."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels_last: bool = False

    def __call__(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        x = images.to(device, non_blocking=True)
        mean = torch.tensor(self.mean, device=device)
        std = torch.tensor(self.std, device=device)
        x = normalize(x, mean, std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@dataclass(frozen=True)
class EvalResult:
    top1: float          # percent
    top5: float          # percent (top-k with k = min(5, classes))
    loss: float          # mean cross-entropy
    n: int               # images evaluated
    n_skipped: int       # images that could not be decoded
    test_res: int
    crop_pct: float
    interpolation: str

    def row(self) -> dict:
        return asdict(self)


def eval_loader(split: SplitIndex, test_res: int, crop_pct: float, interpolation: str, *, batch_size: int = 100,
                workers: int | None = None, dist_env: Dist = Dist(), pin_memory: bool = False,
                device: torch.device | None = None, pipeline: str = "auto"):
    """This rank's batches of ``split`` at one test geometry. With a ``device``, ``pipeline``
    chooses the data pipeline (see :mod:`fixres.data.pipeline`; auto: fast on CUDA)."""
    if device is not None:
        from .data.pipeline import eval_batches
        return eval_batches(split, test_res, crop_pct, interpolation, device=device, pipeline=pipeline,
                            batch_size=batch_size, workers=workers, dist_env=dist_env)
    transform = EvalTransform(test_res, crop_pct, interpolation)
    dataset = ImageDataset(split, transform)
    return make_loader(dataset, sampler=EvalShard(len(dataset), dist_env.rank, dist_env.world),
                       batch_size=batch_size, workers=workers, pin_memory=pin_memory)


@torch.no_grad()
def infer(model: nn.Module, batches, device: torch.device, preprocess: Preprocess,
          amp_dtype: torch.dtype | None = None) -> Iterator[tuple[torch.Tensor, Batch]]:
    """Yield ``(logits, batch)`` for every batch that holds at least one image."""
    model.eval()
    for batch in batches:
        if batch.images is None:
            yield None, batch
            continue
        with autocast(device, amp_dtype):
            logits = model(preprocess(batch.images, device))
        yield logits.float(), batch


class Tally:
    """Running sums of correct top-1/top-k, loss and counts, kept on the device."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(5, dtype=torch.float64, device=device)  # top1, top5, loss, n, skipped

    def add(self, logits: torch.Tensor | None, labels: torch.Tensor, n_skipped: int) -> None:
        self.sums[4] += n_skipped
        if logits is None:
            return
        labels = labels.to(logits.device, non_blocking=True)
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(labels[:, None])
        self.sums[0] += hits[:, 0].sum()
        self.sums[1] += hits.any(dim=1).sum()
        self.sums[2] += F.cross_entropy(logits, labels, reduction="sum").double()
        self.sums[3] += labels.numel()

    def result(self, dist_env: Dist, **geometry) -> EvalResult:
        top1, top5, loss, n, skipped = all_reduce_sum(self.sums.clone(), dist_env).tolist()
        n_safe = max(n, 1)
        return EvalResult(100 * top1 / n_safe, 100 * top5 / n_safe, loss / n_safe, int(n), int(skipped), **geometry)


def evaluate(model: nn.Module, split: SplitIndex, *, test_res: int, crop_pct: float, interpolation: str,
             preprocess: Preprocess, device: torch.device, batch_size: int = 100, workers: int | None = None,
             amp_dtype: torch.dtype | None = None, dist_env: Dist = Dist(), progress=None) -> tuple[EvalResult, list]:
    """Top-1, top-5, loss and counts of ``model`` on ``split`` at one test geometry.

    Returns the result and the list of ``(path, reason)`` of the split's files that could
    not be read (refused when scanned, or failed to decode).
    """
    loader = eval_loader(split, test_res, crop_pct, interpolation, batch_size=batch_size, workers=workers,
                         dist_env=dist_env, pin_memory=device.type == "cuda", device=device)
    tally, failed = Tally(device), []
    if dist_env.is_main:  # files refused when scanned: the same list on every rank, counted once
        tally.add(None, torch.zeros(0, dtype=torch.long), len(split.skipped))
    batches = progress(loader) if progress else loader
    for logits, batch in infer(model, batches, device, preprocess, amp_dtype):
        tally.add(logits, batch.labels, len(batch.skipped))
        failed.extend(batch.skipped)
    result = tally.result(dist_env, test_res=test_res, crop_pct=crop_pct, interpolation=interpolation)
    return result, list(split.skipped) + gather_lists(failed, dist_env)


def gather_lists(items: list, dist_env: Dist) -> list:
    """The concatenation over ranks of a small per-rank list (identical on every rank)."""
    if not dist_env.enabled:
        return items
    parts: list = [None] * dist_env.world
    torch.distributed.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def load_split(data: str | Path, split: str, class_names: tuple[str, ...]) -> SplitIndex:
    """Scan ``data/split`` and check that its classes are the checkpoint's."""
    root = Path(data)
    if not root.is_dir():
        raise FixresError(f"data directory {root} does not exist")
    if not (root / split).is_dir():
        raise FixresError(f"{root} has no {split}/ directory (expected {root}/{split}/<class>/<images>)")
    check_same_classes(tuple(class_names), list_classes(root / split), "the checkpoint's classes", f"{root / split}")
    return scan_split(root / split, tuple(class_names))


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, *, split: str = "val", test_res: int | None = None,
                        crop_pct: float | None = None, interpolation: str | None = None, batch_size: int = 100,
                        workers: int | None = None, device: str = "auto", amp: str = "auto",
                        quiet: bool = True, dist_env: Dist = Dist()) -> tuple[EvalResult, CheckpointMeta, list]:
    """Evaluate a checkpoint; geometry defaults to what the checkpoint records.

    Under torchrun every rank calls this with its ``dist_env``: each evaluates a disjoint
    shard and all get the same totals."""
    model, meta = open_checkpoint(checkpoint)
    test_res = meta.test_res if test_res is None else test_res
    crop_pct = meta.crop_pct if crop_pct is None else crop_pct
    index = load_split(data, split, meta.class_names)
    dev = resolve_device(device, dist_env)
    model.to(dev)
    result, skipped = evaluate(
        model, index, test_res=test_res, crop_pct=crop_pct,
        interpolation=interpolation or meta.interpolation, preprocess=Preprocess(meta.mean, meta.std),
        device=dev, batch_size=batch_size, workers=workers, amp_dtype=autocast_dtype(amp, dev), dist_env=dist_env,
        progress=lambda it: iterate(it, f"eval@{test_res}", enabled=not quiet and dist_env.is_main, total=len(it)))
    return result, meta, skipped
