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


def check_input_size(model: nn.Module, resolutions, what: str = "test resolution") -> None:
    """Refuse, before any work, a resolution ``model`` cannot run at: one line that names the
    nearest sizes that work, or timm's own reason (never a traceback)."""
    p = patch_size(model)
    for res in resolutions:
        if p and res % p:
            lower, upper = res - res % p, res - res % p + p
            raise FixresError(f"{what} {res}px is not a multiple of the patch size {p} of {architecture(model)}: "
                              f"use {lower if lower else upper} or {upper} (docs/adapt.md)")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        for res in sorted(set(resolutions)):
            with torch.no_grad():
                model(torch.zeros(1, 3, res, res, device=device, dtype=param.dtype if param is not None else None))
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise FixresError(f"out of memory running ONE image through {architecture(model)} at {res}x{res} on "
                          f"{device}: use a smaller model or resolution, or a device with more memory") from None
    except (AssertionError, RuntimeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FixresError(f"{architecture(model)} cannot run at {res}x{res} ({reason[:160]})") from None
    finally:
        model.train(was_training)
