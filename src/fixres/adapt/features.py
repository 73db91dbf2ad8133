"""Cached features of the frozen layers, and the pooled features the classifier sees.

Why caching is exact: below the adapted layers every module is frozen and in eval mode,
so ``bottom(x)`` is a fixed function of the image. With the v1 preprocessing (the test
one, no randomness) the image of a training sample is the same at every epoch, hence so
is ``bottom(x)``: computing it once and training ``top`` on the stored tensors performs
the same arithmetic as running the whole network every step (the only difference is the
batch grouping of the frozen convolutions, which changes float rounding, not the maths).

Memory of the cache: ``N x sum_t prod(shape_t[1:]) x bytes_per_element`` over the tensors
``t`` that cross the cut (for ``fixres`` on a ResNet: the last block's input to its final
batch-norm plus its shortcut, ``2 x C x (K/32)^2`` values per image; for ``head``: the
``C`` pooled features). It stays on the GPU when it takes at most half of the free GPU
memory, else in (pinned) CPU memory when it takes at most half of the available RAM;
otherwise training falls back to the full-network loop.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import nn

from ..core.runtime import Dist, Runtime, autocast, gather_lists
from ..data.transforms import Normalizer

CACHE_FRACTION = 0.5


def host_available_bytes() -> int:
    """Memory the OS can give this process without swapping (Linux MemAvailable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def cache_storage(nbytes: int, device: torch.device) -> torch.device | None:
    """Where a cache of ``nbytes`` goes: the compute device, the CPU, or nowhere (None)."""
    if device.type == "cuda" and nbytes <= CACHE_FRACTION * torch.cuda.mem_get_info(device)[0]:
        return device
    if nbytes <= CACHE_FRACTION * host_available_bytes():
        return torch.device("cpu")
    return None


@dataclass
class FeatureCache:
    """The crossing tensors of every adaptation image, row ``i`` = image ``i``."""

    tensors: tuple[torch.Tensor, ...]
    labels: torch.Tensor            # (N,) on the CPU
    valid: torch.Tensor             # (N,) bool on the CPU: False for images that failed to decode
    skipped: list                   # [(path, reason)]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    @property
    def storage(self) -> torch.device:
        return self.tensors[0].device

    def batch(self, indices: list[int], device: torch.device):
        """``(inputs, labels)`` on ``device`` for the decodable images among ``indices``
        (the order kept), or None if there is none. Rows are copied: the top may work in place."""
        idx = torch.tensor(indices, dtype=torch.long)
        idx = idx[self.valid[idx]]
        if not len(idx):
            return None
        rows = idx.to(self.storage)
        inputs = tuple(t.index_select(0, rows).to(device, non_blocking=True) for t in self.tensors)
        return inputs, self.labels[idx].to(device, non_blocking=True)


@torch.no_grad()
def build_cache(bottom: nn.Module, loader, n: int, normalizer: Normalizer,
                rt: Runtime) -> tuple[FeatureCache | None, str]:
    """Run ``bottom`` once over the ``n`` images of ``loader`` (in index order) and keep its
    outputs. Returns ``(cache, "")``, or ``(None, reason)`` when the cache would not fit.

    Under several processes each rank computes the rows of its batches and the rows are
    summed across ranks (every other rank holds zeros there), so every rank ends with the
    whole cache, exactly as one process would have computed it."""
    return build_caches(bottom, loader, n, normalizer, rt, views=None)[0]


@torch.no_grad()
def build_caches(bottom: nn.Module, loader, n: int, normalizer: Normalizer, rt: Runtime,
                 views: int | None) -> list[tuple[FeatureCache | None, str]]:
    """:func:`build_cache` for each of ``views`` geometries of one multi-view loader (every image
    decoded once, a ladder's rungs: :class:`~fixres.data.loader.MultiView`); ``views=None``: the
    loader yields single images. The cache of view ``v`` equals a one-view pass at that geometry."""
    device, dist_env = rt.device, rt.dist
    k = 1 if views is None else views
    tensors, reasons = [None] * k, [""] * k
    labels, valid, skipped = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.bool), []
    for batch in loader:
        skipped.extend(batch.skipped)
        if batch.images is None:
            continue
        for v in range(k):
            if reasons[v]:
                continue
            images = batch.images if views is None else batch.images[v]
            with autocast(device, rt.amp_dtype):
                out = bottom(normalizer(images, device))
            if tensors[v] is None:
                tensors[v], reasons[v] = _allocate([(t.shape[1:], t.dtype) for t in out], n, device)
                if tensors[v] is None:
                    continue
            rows = batch.indices.to(tensors[v][0].device)
            for dst, src in zip(tensors[v], out):
                dst.index_copy_(0, rows, src.to(dst.device, dst.dtype))
        labels[batch.indices] = batch.labels
        valid[batch.indices] = True
    if dist_env.enabled:
        merged = [_merge_ranks(tensors[v], reasons[v], n, device, dist_env) for v in range(k)]
        tensors, reasons = [m[0] for m in merged], [m[1] for m in merged]
        labels, valid = _merged_labels(labels, valid, dist_env)
        skipped = gather_lists(skipped, dist_env)
    return [(None, reasons[v] or "no adaptation image could be decoded") if tensors[v] is None
            else (FeatureCache(tensors[v], labels, valid, skipped), "") for v in range(k)]


def _allocate(layout: list, n: int, device: torch.device) -> tuple[tuple[torch.Tensor, ...] | None, str]:
    """Zero-filled cache tensors for ``n`` images of the given (shape, dtype) layout, where they fit."""
    per_image = sum(math.prod(shape) * torch.empty((), dtype=dtype).element_size() for shape, dtype in layout)
    storage = cache_storage(per_image * n, device)
    if storage is None:
        return None, (f"the cached features would take {per_image * n / 2**30:.2f} GiB "
                      f"({per_image / 2**20:.2f} MiB per image x {n}), more than half of the free memory")
    pin = storage.type == "cpu" and device.type == "cuda"
    return tuple(torch.zeros((n, *shape), dtype=dtype, device=storage, pin_memory=pin) for shape, dtype in layout), ""


def _merge_ranks(tensors, reason: str, n: int, device: torch.device, dist_env: Dist):
    """Agree on the layout (a rank may have had no batch), then sum the rows of all ranks."""
    mine = None if tensors is None else [(tuple(t.shape[1:]), t.dtype) for t in tensors]
    views: list = [None] * dist_env.world
    torch.distributed.all_gather_object(views, (mine, reason))
    reasons = [r for _, r in views if r]
    layout = next((m for m, _ in views if m is not None), None)
    if reasons or layout is None:
        return None, reasons[0] if reasons else "no adaptation image could be decoded"
    if tensors is None:
        tensors, _ = _allocate(layout, n, device)
    for t in tensors:  # collectives run where the tensor lives (gloo: CPU, NCCL: GPU)
        torch.distributed.all_reduce(t)
    return tensors, ""


def _merged_labels(labels: torch.Tensor, valid: torch.Tensor, dist_env: Dist) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's labels and decodable flags (each rank set the rows of its batches)."""
    out = []
    for t in (labels, valid):
        merged = t.long()
        torch.distributed.all_reduce(merged)
        out.append(merged.to(t.dtype))
    return out[0], out[1]
