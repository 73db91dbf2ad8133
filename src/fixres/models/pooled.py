"""The pooled features: the classifier's input, read with a forward pre-hook on the classifier.

Used by the ``parametric`` adaptation (the laws it equalises) and by ``fixres stats`` (the
distributions it compares). They are read BEFORE any equaliser a ``parametric``-adapted
checkpoint attaches to the classifier.
"""
from __future__ import annotations

import torch
from torch import nn

from ..core.runtime import Runtime, autocast, gather_lists
from ..data.transforms import Normalizer
from .heads import find_classifier


class _Capture:
    """A forward pre-hook that keeps the classifier's input of every call."""

    def __init__(self):
        self.rows: list[torch.Tensor] = []

    def __call__(self, module, args):
        self.rows.append(args[0].detach().flatten(1).float())


def pooled_features(model: nn.Module, images: torch.Tensor, *, classifier: str | None = None) -> torch.Tensor:
    """The classifier's input (the pooled features, ``(N, C)``) for normalised images.

    Read before any equalisation a checkpoint may apply to it (``method parametric``).
    """
    capture = _Capture()
    handle = model.get_submodule(classifier or find_classifier(model)).register_forward_pre_hook(capture, prepend=True)
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return capture.rows[-1]


@torch.no_grad()
def collect_pooled(model: nn.Module, classifier: str, loader, normalizer: Normalizer,
                   rt: Runtime, views: int | None = None):
    """Pooled features of every decodable image of ``loader`` (CPU, float32, in image index
    order, gathered from every rank) and the skipped files. ``views``: a multi-view loader
    (one decode per image): a list of feature tensors, one per geometry, instead of one."""
    k = 1 if views is None else views
    captures, skipped, indices = [_Capture() for _ in range(k)], [], []
    active = [0]
    handle = model.get_submodule(classifier).register_forward_pre_hook(
        lambda m, a: captures[active[0]](m, a), prepend=True)
    model.eval()
    try:
        for batch in loader:
            skipped.extend(batch.skipped)
            if batch.images is not None:
                for v in range(k):
                    active[0] = v
                    with autocast(rt.device, rt.amp_dtype):
                        model(normalizer(batch.images if views is None else batch.images[v], rt.device))
                indices.append(batch.indices)
    finally:
        handle.remove()
    order = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)
    out = []
    for capture in captures:
        rows = torch.cat([r.cpu() for r in capture.rows]) if capture.rows else torch.zeros(0, 0)
        rank_order = order
        if rt.dist.enabled:
            parts: list = [None] * rt.dist.world
            torch.distributed.all_gather_object(parts, (order, rows))
            parts = [p for p in parts if len(p[0])]
            rank_order = torch.cat([p[0] for p in parts]) if parts else order
            rows = torch.cat([p[1] for p in parts]) if parts else rows
        out.append(rows[rank_order.argsort()] if len(rank_order) else rows)
    if rt.dist.enabled:
        skipped = gather_lists(skipped, rt.dist)
    return (out[0] if views is None else out), skipped
