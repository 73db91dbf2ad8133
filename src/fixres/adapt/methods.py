"""The adaptation loops: train the top of the network, or re-estimate batch-norm statistics.

One training loop (:func:`train`) serves both ways of feeding it: cached features of the
frozen layers (:func:`cached_batches`) or images through the whole network
(:class:`NaiveBatches`). Both draw the same batches: the order of epoch ``e`` is
:class:`~fixres.data.loader.TrainBatches`' permutation for ``(seed, e)`` over the same
images, so the two give the same parameters up to float rounding (tests check it).
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import FixresError
from ..core.runtime import Dist, Runtime, all_reduce_sum, autocast, average_batchnorm_buffers, gather_lists
from ..data.index import SplitIndex
from ..data.loader import TrainBatches, stop_workers
from ..data.pipeline import sampled_batches
from ..data.transforms import Normalizer
from ..train.optim import lr_at, param_groups
from .features import FeatureCache
from .options import BN_MOMENTUM, MOMENTUM, STEP_GAMMA, WEIGHT_DECAY, AdaptOptions
from .surgery import Plan, batchnorms_in, freeze_for, set_modes

Batches = Callable[[int], Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]]]


def cached_batches(cache: FeatureCache, batch_size: int, seed: int, device: torch.device) -> Batches:
    sampler = TrainBatches(len(cache.labels), batch_size, seed)

    def batches(epoch: int):
        sampler.set_epoch(epoch)
        for items in sampler:
            got = cache.batch([i for i, _ in items], device)
            if got is not None:
                yield got
    return batches


class NaiveBatches:
    """Images decoded and transformed every epoch (each draw seeded by (seed, epoch, index));
    under several processes each rank takes its share of every batch. Call with an epoch for
    its batches; ``close()`` (or leaving a ``with`` block) stops the loader's worker processes."""

    def __init__(self, split: SplitIndex, transform, batch_size: int, seed: int, normalizer: Normalizer,
                 rt: Runtime, skipped: dict):
        world = rt.dist.world
        if batch_size % world:
            raise FixresError(f"--batch-size {batch_size} is not divisible by the {world} processes")
        self.sampler = TrainBatches(len(split), batch_size, seed, rt.dist.rank, world)
        self.loader = sampled_batches(split, transform, self.sampler, rt, persistent=True)
        self.normalizer, self.device, self.skipped = normalizer, rt.device, skipped

    def __call__(self, epoch: int):
        self.sampler.set_epoch(epoch)
        for batch in self.loader:
            self.skipped.update(batch.skipped)
            if batch.images is not None:
                yield (self.normalizer(batch.images, self.device),), batch.labels.to(self.device, non_blocking=True)

    def close(self) -> None:
        stop_workers(self.loader)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def adaptation_state(model: nn.Module, plan: Plan):
    """Freeze as the plan says and set batch-norm momentum to the paper's 0.1 while training;
    restore ``requires_grad``, momenta and eval mode afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    bns = batchnorms_in(model, plan.train_mode)
    momenta = [(m, m.momentum) for m in bns]
    try:
        for m in bns:
            m.momentum = BN_MOMENTUM
        yield freeze_for(model, plan)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, momentum in momenta:
            m.momentum = momentum
        model.eval()


def train(model: nn.Module, plan: Plan, forward: Callable, batches: Batches, opts: AdaptOptions, rt: Runtime,
          sharded: Dist = Dist()) -> list[dict]:
    """SGD (momentum 0.9, weight decay 1e-4 on weights) with step decay, on ``forward``
    (the top on cached features, or the model). Returns one row per epoch.

    ``sharded``: the process group when every rank sees only its share of each batch
    (the full-network loop); gradients and loss sums are then averaged over ranks and the
    batch-norm statistics too at the end. On cached features every rank holds the whole
    cache and runs the same steps, so no communication is needed (pass the default)."""
    history, device = [], rt.device
    with adaptation_state(model, plan) as params:
        if not params:
            raise FixresError(f"method {plan.method}: nothing to train in this model")
        optimizer = torch.optim.SGD(param_groups(model, WEIGHT_DECAY), lr=opts.base_lr, momentum=MOMENTUM)
        for epoch in range(opts.epochs):
            lr = lr_at(epoch, total_steps=opts.epochs, warmup_steps=0, peak=opts.base_lr, schedule="step",
                       decay_every=opts.step_epochs, gamma=STEP_GAMMA)   # the paper's: x0.1 every step_epochs
            for group in optimizer.param_groups:
                group["lr"] = lr
            set_modes(model, plan)
            sums = torch.zeros(3, dtype=torch.float64, device=device)   # loss, correct, images: no per-step sync
            t0 = time.perf_counter()
            for inputs, labels in batches(epoch):
                with autocast(device, rt.amp_dtype):
                    logits = forward(*inputs)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=opts.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if sharded.enabled:
                    average_gradients(params, sharded)
                optimizer.step()
                sums += torch.stack([loss.detach().double() * labels.numel(),
                                     (logits.argmax(1) == labels).sum().double(),
                                     torch.tensor(labels.numel(), dtype=torch.float64, device=device)])
            if sharded.enabled:
                torch.distributed.all_reduce(sums)
            loss_sum, correct, n = sums.tolist()   # one host sync per epoch
            if not math.isfinite(loss_sum):
                raise FixresError(f"adaptation loss became {loss_sum} in epoch {epoch + 1}; lower --lr")
            row = {"epoch": epoch + 1, "loss": loss_sum / max(n, 1), "train_top1": 100 * correct / max(n, 1),
                   "images": int(n), "lr": lr, "seconds": round(time.perf_counter() - t0, 3)}
            history.append(row)
            rt.log(f"epoch {row['epoch']}/{opts.epochs}  loss {row['loss']:.4f}  train top-1 {row['train_top1']:.2f}  "
                f"lr {lr:.3g}  {row['seconds']:.2f}s")
        average_batchnorm_buffers(model, sharded)
    return history


def average_gradients(params, dist_env: Dist) -> None:
    for p in params:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(dist_env.world)


class _Moments:
    """Per-channel count, mean and sum of squared deviations of a batch-norm's input,
    merged batch by batch in float64 (Chan et al.), so the result is exactly the mean and
    variance over every pixel of every image, whatever the batching."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def __call__(self, module, args):
        x = args[0].detach().double()
        dims = [d for d in range(x.ndim) if d != 1]
        count = x.numel() // x.shape[1]
        mean = x.mean(dims)
        shape = [1, -1] + [1] * (x.ndim - 2)
        m2 = ((x - mean.view(shape)) ** 2).sum(dims)
        self._add(count, mean, m2)

    def _add(self, count: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        if self.mean is None:
            self.n, self.mean, self.m2 = count, mean, m2
            return
        total = self.n + count
        delta = mean - self.mean
        self.mean = self.mean + delta * count / total
        self.m2 = self.m2 + m2 + delta ** 2 * self.n * count / total
        self.n = total

    @staticmethod
    def merge(local: "_Moments", dist_env: Dist) -> "_Moments":
        """The moments over every rank's images (merged in rank order, identical on every rank)."""
        parts: list = [None] * dist_env.world
        mine = None if local.mean is None else (local.n, local.mean.cpu(), local.m2.cpu())
        torch.distributed.all_gather_object(parts, mine)
        merged = _Moments()
        for part in filter(None, parts):
            merged._add(*part)
        return merged


@torch.no_grad()
def reestimate_bn(model: nn.Module, names: tuple[str, ...], loader, normalizer: Normalizer,
                  rt: Runtime) -> tuple[int, list]:
    """Replace the running mean/var of the named batch-norms by the exact mean and unbiased
    variance of their inputs over every image of ``loader`` (no gradient, no labels).

    The named batch-norms run in train mode during the pass, so layers after them see
    batch-normalised inputs (what matters with ``all_bn``); ``num_batches_tracked`` is kept.
    Returns the number of images used and the files that could not be decoded.
    """
    moments, images, skipped = bn_moments(model, names, loader, normalizer, rt, views=None)
    set_bn_statistics(model, names, moments[0])
    return images, skipped


@torch.no_grad()
def bn_moments(model: nn.Module, names: tuple[str, ...], loader, normalizer: Normalizer, rt: Runtime,
               views: int | None) -> tuple[list[list[_Moments]], int, list]:
    """The exact input moments of the named batch-norms over every image of ``loader``, for each
    of ``views`` geometries of a multi-view loader (one decode per image: a ladder's rungs), or
    for single images (``views=None``). The model's running statistics are left to the caller:
    the pass runs those batch-norms in train mode, which moves them."""
    bns = [model.get_submodule(n) for n in names]
    k = 1 if views is None else views
    moments = [[_Moments() for _ in bns] for _ in range(k)]
    active = [0]
    handles = [bn.register_forward_pre_hook(lambda m, a, i=i: moments[active[0]][i](m, a)) for i, bn in enumerate(bns)]
    tracked = [bn.num_batches_tracked.clone() if bn.num_batches_tracked is not None else None for bn in bns]
    images, skipped = 0, []
    model.eval()
    for bn in bns:
        bn.train()
    try:
        for batch in rt.progress(loader, "bn statistics" + (f" x{views}" if views else "")):
            skipped.extend(batch.skipped)
            if batch.images is None:
                continue
            for v in range(k):
                active[0] = v
                with autocast(rt.device, rt.amp_dtype):
                    model(normalizer(batch.images if views is None else batch.images[v], rt.device))
            images += len(batch.labels)
    finally:
        for h in handles:
            h.remove()
        model.eval()
        for bn, count in zip(bns, tracked):
            if count is not None:
                bn.num_batches_tracked.copy_(count)
    if rt.dist.enabled:
        images = int(all_reduce_sum(torch.tensor([images], dtype=torch.float64, device=rt.device), rt.dist).item())
        skipped = gather_lists(skipped, rt.dist)
        moments = [[_Moments.merge(m, rt.dist) for m in per_view] for per_view in moments]
    if images == 0:
        raise FixresError("no adaptation image could be decoded")
    return moments, images, skipped


def set_bn_statistics(model: nn.Module, names: tuple[str, ...], moments: list[_Moments]) -> None:
    """Running mean and unbiased variance of the named batch-norms from their input moments."""
    for name, m in zip(names, moments):
        bn = model.get_submodule(name)
        bn.running_mean.copy_(m.mean.to(bn.running_mean.dtype))
        bn.running_var.copy_((m.m2 / max(m.n - 1, 1)).to(bn.running_var.dtype))
