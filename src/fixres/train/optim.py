"""Optimiser (any of timm's, by name), parameter groups and the learning-rate schedule (a pure
function of the step, so that a resumed run needs no scheduler state)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights only: never on biases nor on normalisation parameters
    (all tensors with fewer than two dimensions)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


FUSABLE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)   # torch's own, with a fused CUDA kernel


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2`` by name, on our parameter groups (no weight decay on norms
    and biases, the same grouping as timm's ``filter_bias_and_bn``). ``sgd`` keeps fixres's
    meaning (classical momentum unless ``--nesterov``), where timm's ``sgd`` is Nesterov."""
    from timm.optim import create_optimizer_v2, get_optimizer_info
    name = cfg.optimizer.lower()
    kwargs = {}
    if name == "sgd":
        kwargs["nesterov"] = cfg.nesterov and cfg.momentum > 0
    info = get_optimizer_info(name.split("_")[-1])
    if device.type == "cuda" and info.opt_class in FUSABLE and "_" not in name:
        kwargs["fused"] = True
    return create_optimizer_v2(param_groups(model, cfg.decay), opt=name, lr=cfg.peak_lr, weight_decay=cfg.decay,
                               momentum=cfg.momentum, **kwargs)


def lr_at(step: int, *, total_steps: int, warmup_steps: int, peak: float, schedule: str = "cosine",
          min_lr: float = 0.0, decay_every: int = 0, gamma: float = 0.1) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up, then cosine, step or
    linear decay (linear: with the warm-up, FFCV's triangular "cyclic" schedule)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if schedule == "step":
        return peak * gamma ** (step // decay_every) if decay_every > 0 else peak
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return min_lr + (peak - min_lr) * (1 - progress)
    return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * progress))


def schedule_for(cfg: TrainConfig, steps_per_epoch: int):
    """``lr_at`` specialised to a configuration: step -> learning rate."""
    kw = dict(total_steps=cfg.epochs * steps_per_epoch, warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
              peak=cfg.peak_lr, schedule=cfg.schedule, min_lr=cfg.min_lr,
              decay_every=cfg.step_epochs * steps_per_epoch, gamma=cfg.step_gamma)
    return lambda step: lr_at(step, **kw)
