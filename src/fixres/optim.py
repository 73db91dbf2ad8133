"""Optimiser, parameter groups and the learning-rate schedule (a pure function of the step)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .train_config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights only: never on biases nor on normalisation parameters
    (all tensors with fewer than two dimensions)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.decay)
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.peak_lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               **fused)
    return torch.optim.AdamW(groups, lr=cfg.peak_lr, **fused)


def lr_at(step: int, *, total_steps: int, warmup_steps: int, peak: float, schedule: str = "cosine",
          min_lr: float = 0.0, decay_every: int = 0, gamma: float = 0.1) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up, then cosine or step decay."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if schedule == "step":
        return peak * gamma ** (step // decay_every) if decay_every > 0 else peak
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def schedule_for(cfg: TrainConfig, steps_per_epoch: int):
    """``lr_at`` specialised to a configuration: step -> learning rate."""
    kw = dict(total_steps=cfg.epochs * steps_per_epoch, warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
              peak=cfg.peak_lr, schedule=cfg.schedule, min_lr=cfg.min_lr,
              decay_every=cfg.step_epochs * steps_per_epoch, gamma=cfg.step_gamma)
    return lambda step: lr_at(step, **kw)
