"""Optimiser (any of timm's, by name), parameter groups and the learning-rate schedule (a pure
function of the step, so that a resumed run needs no scheduler state)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """timm's grouping (``param_groups_weight_decay``, as ``create_optimizer_v2`` makes it): no
    weight decay on biases, on tensors of fewer than two dimensions (norms) nor on the names the
    model lists in ``no_weight_decay()`` (a ViT's ``pos_embed`` and ``cls_token``, Swin's
    relative-position tables); frozen parameters are left out."""
    from timm.optim import param_groups_weight_decay
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)


FUSABLE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)   # torch's own, with a fused CUDA kernel


def optimizer_kwargs(cfg: TrainConfig, device: torch.device) -> dict:
    """The :func:`make_optimizer` arguments of a training configuration (as timm's
    ``optimizer_kwargs(cfg)`` feeds ``create_optimizer_v2``). ``sgd`` keeps fixres's meaning
    (classical momentum unless ``--nesterov``), where timm's ``sgd`` is Nesterov."""
    from timm.optim import get_optimizer_info
    name = cfg.optimizer.lower()
    kwargs = dict(opt=name, lr=cfg.peak_lr, weight_decay=cfg.decay, momentum=cfg.momentum)
    if name == "sgd":
        kwargs["nesterov"] = cfg.nesterov and cfg.momentum > 0
    if device.type == "cuda" and get_optimizer_info(name.split("_")[-1]).opt_class in FUSABLE and "_" not in name:
        kwargs["fused"] = True
    return kwargs


def make_optimizer(model: nn.Module, *, opt: str, lr: float, weight_decay: float, momentum: float,
                   **kwargs) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2`` by name on ``model``: timm's own parameter groups (see
    :func:`param_groups`), its optimiser class and defaults."""
    from timm.optim import create_optimizer_v2
    return create_optimizer_v2(model, opt=opt, lr=lr, weight_decay=weight_decay, momentum=momentum, **kwargs)


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
