"""Running a model at the test resolution asked for: fixed-size models made resolution-free,
and one clear line when a model cannot run at a resolution.

ViT-style models (ViT, DeiT, Swin...) declare ``fixed_input_size``: their position embedding
(or attention windows) is built for one size, and a forward at another raises an assertion.
timm's own mechanism lifts it: built with ``dynamic_img_size=True`` the model resamples its
position embedding (or pads its windows) on the fly for each input size, with the same
weights. fixres builds every model that accepts it that way (:func:`size_kwargs`), records
it in the checkpoint's ``model_kwargs`` and in an export's ``model_args``, so timm rebuilds
the same model. A resolution the model still cannot take (a ViT's patch grid needs a multiple
of its patch size) is refused before any work by :func:`check_input_size`, naming the nearest
sizes that work.
"""
from __future__ import annotations

import functools

import timm
import torch
from torch import nn

from ..core.errors import FixresError
from .heads import architecture

DYNAMIC = {"dynamic_img_size": True}


@functools.lru_cache(maxsize=64)
def size_kwargs(name: str) -> dict:
    """``{"dynamic_img_size": True}`` for a timm architecture that declares a fixed input size
    and accepts the argument, else ``{}`` (found by building it on the meta device)."""
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")) or not timm.is_model(name):
        return {}
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.to_dict().get("fixed_input_size"):
        return {}
    try:
        with torch.device("meta"):
            timm.create_model(name, pretrained=False, **DYNAMIC)
    except TypeError:            # the architecture has no such option
        return {}
    return dict(DYNAMIC)


def rebuild_kwargs(model: nn.Module, name: str) -> dict:
    """What timm needs, besides the architecture, to rebuild a resolution-free model exactly:
    ``dynamic_img_size`` and the NATIVE ``img_size`` its position embedding was built for
    (timm would otherwise build it at the config's input size and resample the embedding once
    at load, which rounds differently from the on-the-fly resampling fixres evaluated with)."""
    kwargs = size_kwargs(name)
    native = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if kwargs and native is not None:
        kwargs = {**kwargs, "img_size": [int(v) for v in native]}
    return kwargs


def patch_size(model: nn.Module) -> int | None:
    """The patch size a ViT-style model's input must be a multiple of (None: any size)."""
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "patch_size", None)
    if size is None or getattr(embed, "dynamic_img_pad", False):
        return None
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    return int(size[0]) if size[0] == size[1] else None


def check_input_size(model: nn.Module, resolutions, what: str = "test resolution") -> int:
    """Refuse, before any work, a resolution ``model`` cannot run at: one line that names the
    nearest sizes that work, or timm's own reason (never a traceback). Returns the estimated
    memory one image takes through the model at the largest resolution (:data:`PEAK_FACTOR`
    times its largest layer output, measured on that forward), for :func:`fit_batch`."""
    p = patch_size(model)
    off = sorted({r for r in resolutions if p and r % p})
    if len(off) == 1 or (off and len(set(resolutions)) == 1):
        res = off[0]
        lower, upper = res - res % p, res - res % p + p
        raise FixresError(f"{what} {res}px is not a multiple of the patch size {p} of {architecture(model)}: "
                          f"use {lower if lower else upper} or {upper} (docs/adapt.md)")
    if off:
        low, high = min(resolutions), max(resolutions)
        start, end = -(-low // p) * p, high // p * p
        grid = f"{start}:{end}:{p}" if start < end else str(start if start <= high else end + p)
        raise FixresError(f"{what}s {', '.join(map(str, off))}px are not multiples of the patch size {p} of "
                          f"{architecture(model)}: on its grid, {grid} (docs/adapt.md)")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    largest = [0]

    def record(module, args, output):
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    try:
        for res in sorted(set(resolutions)):
            handles = [m.register_forward_hook(record) for m in leaves] if res == max(resolutions) else []
            try:
                with torch.no_grad():
                    model(torch.zeros(1, 3, res, res, device=device, dtype=param.dtype if param is not None else None))
            finally:
                for h in handles:
                    h.remove()
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise FixresError(f"out of memory running ONE image through {architecture(model)} at {res}x{res} on "
                          f"{device}: use a smaller model or resolution, or a device with more memory") from None
    except (AssertionError, RuntimeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FixresError(f"{architecture(model)} cannot run at {res}x{res} ({reason[:160]})") from None
    finally:
        model.train(was_training)
    return PEAK_FACTOR * largest[0]


# Inference holds a layer's input, its output and a residual branch or two at once: the peak of a
# forward pass, per image, measured at about 3.7x its largest layer output (ResNet-50, CPU, 512 px).
PEAK_FACTOR = 4
MEMORY_SHARE = 0.7      # of the memory available that a batch may plan to use


def memory_available(device: torch.device) -> int:
    """Bytes free for a batch: the GPU's free memory, or on the CPU the smaller of the machine's
    available memory and what this process's cgroup limit leaves."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    free = _meminfo("MemAvailable")
    limit, used = _cgroup("memory.max"), _cgroup("memory.current")
    if limit is not None and used is not None:
        free = min(free, limit - used) if free is not None else limit - used
    return free if free is not None else 1 << 62


def _meminfo(field: str) -> int | None:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup(name: str) -> int | None:
    try:
        text = open(f"/sys/fs/cgroup/{name}").read().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def fit_batch(per_image: int, batch_size: int, device: torch.device, what: str, input_bytes: int = 0,
              log=None) -> int:
    """The batch that fits: ``batch_size``, or fewer images (said through ``log``) when
    ``batch_size x (per_image + input_bytes)`` would exceed :data:`MEMORY_SHARE` of the memory
    available; refused in one line when one image does not fit."""
    need = per_image + input_bytes
    budget = int(MEMORY_SHARE * memory_available(device))
    if need * batch_size <= budget:
        return batch_size
    fits = budget // max(need, 1)
    if fits < 1:
        raise FixresError(f"{what}: one image needs about {need / 2**20:.0f} MiB on {device}, more than the "
                          f"{budget / 2**20:.0f} MiB available to a batch; use a lower resolution or a device with "
                          "more memory")
    if log is not None:
        log(f"{what}: --batch-size {batch_size} would need about {need * batch_size / 2**30:.1f} GiB on {device} "
            f"({budget / 2**30:.1f} GiB available): using batches of {fits}")
    return int(fits)
