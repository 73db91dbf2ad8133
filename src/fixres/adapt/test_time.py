"""Tent at test time, as its authors run it (Wang et al., ICLR 2021): each test batch is
predicted by a model that adapts on that very batch.

For every batch: every batch-norm normalises with the batch's own statistics, the model
predicts, and one SGD step (momentum 0.9, lr 0.00025 x batch / 64) lowers the mean entropy of
those predictions over the gamma/beta of every normalisation layer. The batch's predictions
are the ones the step was taken on (the reference code returns the outputs of the forward it
adapts on, so with one step the update serves the next batches). *Episodic* (the default):
the model and the optimiser are reset to the checkpoint before every batch, so each batch
is predicted independently of the others and of their order; *online*: the adaptation
carries over from batch to batch (the paper's ImageNet-C results), so the figure depends on
the order of the batches and on the batch size. The images are evaluated in a seeded random
order (``--order-seed``, 0 by default with ``--tent``): in the split's sorted order every batch
would hold one class, and batch statistics of one class are not what a deployment sees.

This is an inference procedure, not a checkpoint: ``fixres eval --tent`` measures it.
``fixres adapt --method tent`` (:mod:`fixres.adapt.tent`) runs the online adaptation over a
folder of unlabelled images once and saves the result.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
from torch import nn

from ..core.errors import FixresError
from ..core.options import option
from ..core.runtime import Dist
from ..measure.infer import EvalOptions, evaluate_checkpoint
from .options import MOMENTUM, tent_lr
from .surgery import Plan, freeze_for, make_plan, set_modes
from .tent import entropy

@dataclass(frozen=True, kw_only=True)
class TestTimeOptions:
    tent: Optional[Literal["episodic", "online"]] = option(
        None, "adapt while evaluating, Tent as its authors run it: each batch predicted by the model while one "
              "entropy step on that batch's normalisation gamma/beta is taken (batch-norms on the batch's "
              "statistics); episodic: reset to the checkpoint before every batch; online: the adaptation carries "
              "over (depends on batch order and size)")
    tent_lr: Optional[float] = option(None, "Tent's learning rate (default: 0.00025 x batch size / 64, Tent's "
                                            "ImageNet setting)")

    def __post_init__(self):
        if self.tent_lr is not None and not self.tent_lr > 0:
            raise FixresError(f"--tent-lr must be positive, got {self.tent_lr:g}")
        if self.tent is None and self.tent_lr is not None:
            raise FixresError("--tent-lr applies with --tent episodic|online")


class TestTimeTent(nn.Module):
    """``model`` wrapped so that each forward adapts it on its input first (see the module)."""

    def __init__(self, model: nn.Module, plan: Plan, lr: float, episodic: bool = True):
        super().__init__()
        self.model, self.plan, self.lr, self.episodic = model, plan, lr, episodic
        self.params = freeze_for(model, plan)
        self.initial = copy.deepcopy(model.state_dict())
        self.optimizer = torch.optim.SGD(self.params, lr=lr, momentum=MOMENTUM)
        self.batches = 0

    def reset(self) -> None:
        """Back to the checkpoint: weights, batch-norm buffers and the optimiser's momentum."""
        self.model.load_state_dict(self.initial)
        self.optimizer = torch.optim.SGD(self.params, lr=self.lr, momentum=MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.episodic and self.batches:
            self.reset()
        set_modes(self.model, self.plan)
        with torch.enable_grad():
            try:
                logits = self.model(x)
            except ValueError as e:      # torch's batch-norm: one value per channel cannot be normalised
                if "Expected more than 1 value per channel" not in str(e):
                    raise
                raise FixresError(f"Tent: a batch of {len(x)} image(s) leaves a batch-norm one value per channel "
                                  "(a 1 x 1 feature map) to normalise with; choose a --batch-size that leaves no "
                                  "image alone in the last batch") from None
            loss = entropy(logits).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.batches += 1
        return logits.detach()


def evaluate_with_tent(checkpoint, data: str | Path, opts: EvalOptions, tta: TestTimeOptions, *, quiet: bool = True,
                       dist_env: Dist = Dist()):
    """:func:`~fixres.measure.infer.evaluate_checkpoint` with ``tta.tent``: every batch adapted
    as it is predicted. Returns the same ``(result, meta, skipped)`` and the record of what ran."""
    if tta.tent is None:
        raise FixresError("evaluate_with_tent needs tent='episodic' or 'online'")
    if tta.tent == "online" and dist_env.enabled:
        raise FixresError("--tent online adapts from batch to batch on one process's stream; under torchrun each "
                          "process would adapt its own model on its own shard: use --tent episodic or one process")
    if opts.batch_size < 2:
        raise FixresError("--tent normalises with each batch's statistics: give --batch-size 2 or more")
    lr = tta.tent_lr if tta.tent_lr is not None else tent_lr(opts.batch_size)
    if opts.order_seed is None:          # batches of one class (the sorted order) are not a deployment stream
        opts = dataclasses.replace(opts, order_seed=0)
    record: dict = {"tent": tta.tent, "lr": lr, "batch_size": opts.batch_size, "momentum": MOMENTUM,
                    "order_seed": opts.order_seed}

    def prepare(model: nn.Module) -> nn.Module:
        plan = make_plan(model, "tent")
        record.update(layers=len(plan.trainable), batch_norms=len(plan.batch_norms))
        return TestTimeTent(model, plan, lr, episodic=tta.tent == "episodic")

    result, meta, skipped = evaluate_checkpoint(checkpoint, data, opts, quiet=quiet, dist_env=dist_env,
                                                prepare=prepare)
    return result, meta, skipped, record


__all__ = ["TestTimeOptions", "TestTimeTent", "evaluate_with_tent"]
