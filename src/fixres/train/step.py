"""One optimiser step: ``accum_steps`` micro-batches through the batch recipe, the loss, the
backward pass (gradient sync on the last micro-batch only), clipping, the optimiser and the
gradient scaler. The loop (:mod:`fixres.train.loop`) owns the position; this owns the arithmetic.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from ..core.errors import FixresError
from ..core.runtime import Dist, Runtime, autocast
from ..data.loader import mix_seed
from .recipes import BatchRecipe
from .switchable import resized, set_path

class NonFiniteLoss(FixresError):
    pass


BATCH_RECIPE_STREAM = 0xBA7C4   # tags the seeds of random erasing and mixup (see BatchRecipe)


@dataclass
class TrainStep:
    """The parts one step uses; ``__call__`` runs it."""

    model: nn.Module           # the weights (clipped, and what the optimiser holds)
    net: nn.Module             # what runs the forward: the model, or its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    recipe: BatchRecipe
    normalizer: Callable
    rt: Runtime
    seed: int
    batch_size: int            # global
    accum_steps: int
    clip_grad: float | None
    note_skipped: Callable     # note_skipped(split, [(path, reason), ...])
    paths: tuple[int, ...] = ()   # a resolution-switchable network: the resolution of each path (train.switchable)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def __call__(self, batches: Iterator, step: int, loss_sum: torch.Tensor) -> int:
        """Step ``step`` (0-based, global) over the next ``accum_steps`` batches; adds the summed
        loss to ``loss_sum`` (on the device: no host sync) and returns the images trained on."""
        dist, device, accum, images = self.rt.dist, self.rt.device, self.accum_steps, 0
        for micro in range(accum):
            batch = next(batches)
            self.note_skipped("train", batch.skipped)
            if batch.images is None:
                continue
            x, y = self.normalizer(batch.images, device), batch.labels.to(device, non_blocking=True)
            # random erasing, mixup/CutMix (when on): draws seeded by the step and the share of the global
            # batch (micro * world + rank: the same images whatever the world size and accumulation)
            share = micro * dist.world + dist.rank
            x, target = self.recipe(x, y, mix_seed(self.seed, BATCH_RECIPE_STREAM, step, share))
            try:
                loss = self._backward(x, target, last_micro=micro == accum - 1)
            except torch.cuda.OutOfMemoryError:
                raise self.out_of_memory(len(y), x.shape[-1]) from None
            loss_sum += loss.detach() * y.numel()
            images += y.numel()
        if self.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return images

    def _backward(self, x: torch.Tensor, target: torch.Tensor, last_micro: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch: the loss, or for a switchable network the sum of
        every path's loss (each path's backward in turn; gradients sync on the very last one)."""
        dist, accum = self.rt.dist, self.accum_steps
        paths = self.paths or (x.shape[-1],)
        total = torch.zeros((), device=x.device)
        for i, res in enumerate(paths):
            sync = not dist.enabled or (last_micro and i == len(paths) - 1)
            if self.paths:
                set_path(self.model, i)
            with (contextlib.nullcontext() if sync else self.net.no_sync()), autocast(self.rt.device, self.rt.amp_dtype):
                loss = self.recipe.criterion(self.net(resized(x, res)), target)
            self.scaler.scale(loss / accum).backward()
            total = total + loss.detach()
        if self.paths:
            set_path(self.model, len(paths) - 1)      # the largest resolution's path: evaluation, EMA, saving
        return total

    def out_of_memory(self, images: int, res: int) -> FixresError:
        torch.cuda.empty_cache()
        world, accum, batch = self.rt.dist.world, self.accum_steps, self.batch_size
        half = max(world * accum, batch // 2)
        return FixresError(
            f"GPU out of memory with {images} images per process per step at {res}px "
            f"(--batch-size {batch} over {world} process(es) x {accum} accumulation "
            f"step(s)); try --accum-steps {accum * 2} (same global batch) or --batch-size {half}")


def check_finite(loss_sum: torch.Tensor, dist: Dist, position, last_checkpoint) -> None:
    """Stop if the loss is NaN or infinite on any rank (a collective: every rank calls it at the
    same steps); the message names the last good checkpoint."""
    bad = (~torch.isfinite(loss_sum)).float().reshape(1)
    if dist.enabled:
        torch.distributed.all_reduce(bad)
    if bad.item():
        kept = (f"; the last good checkpoint is kept at {last_checkpoint}" if last_checkpoint
                else "; no checkpoint was written yet")
        raise NonFiniteLoss(f"training loss became {loss_sum.item()} near step {position.step} "
                            f"(epoch {position.epoch + 1}){kept}. Lower --lr, add --clip-grad, or use --amp none")
