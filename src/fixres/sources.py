"""Where a model comes from: opening a fixres checkpoint as a ready model and its metadata.

Sits above :mod:`fixres.checkpoint` (files and metadata) and :mod:`fixres.models` (building
timm models, the equaliser component), so that neither has to reach into the other.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointMeta, load_checkpoint
from .errors import FixresError
from .models import create_model
from .models.equaliser import reapply_adaptation


def build_model(meta: CheckpointMeta, state: dict[str, torch.Tensor]) -> nn.Module:
    """Instantiate the checkpoint's model and load its weights (strictly), then re-attach what
    its adaptation changed outside the weights (a parametric equaliser)."""
    model = create_model(meta.model, meta.num_classes, **meta.model_kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise FixresError(f"checkpoint weights do not fit {meta.model}: {first[1].strip() if len(first) > 1 else first[0]}") from None
    reapply_adaptation(model, meta)
    return model


def open_checkpoint(path: str | Path, ema: bool = False) -> tuple[nn.Module, CheckpointMeta]:
    """The model of a checkpoint, ready for evaluation, and its metadata; ``ema``: with the
    run's EMA weights (see :func:`~fixres.checkpoint.load_checkpoint`)."""
    state, meta, _ = load_checkpoint(path, ema=ema)
    model = build_model(meta, state)
    model.eval()
    return model, meta
