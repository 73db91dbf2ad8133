"""Creating models: any timm model by name, or local weights, with its preprocessing.

Weights come from three places, and only the first touches the network:
``pretrained=True`` (timm downloads them: needs internet), a local weights file
(``.safetensors``, or a torch file read with ``weights_only=True`` -- never unpickled
unsafely), or a fixres checkpoint (see :mod:`fixres.models.checkpoint`).
"""
from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
from torch import nn

from ..core.errors import FixresError
from .sizes import size_kwargs


def check_model_name(name: str) -> None:
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")) or timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.7)
    hint = f"; did you mean {', '.join(close)}?" if close else " (see timm.list_models())"
    raise FixresError(f"unknown model {name!r}{hint}")


def create_model(name: str, num_classes: int, *, pretrained: bool = False, weights: str | Path | None = None,
                 new_classifier: bool = False, **kwargs) -> nn.Module:
    """Build a timm model with ``num_classes`` outputs.

    Args:
        name: a timm model name, optionally with a pretrained tag (``resnet50.a1_in1k``).
        num_classes: size of the classifier.
        pretrained: download timm's pretrained weights (the classifier is re-initialised
            when ``num_classes`` differs from theirs).
        weights: a local weights file to start from (same classifier rule).
        new_classifier: re-initialise the classifier of ``weights`` even when its size fits
            (a target with other classes that happen to be as many).
        **kwargs: passed to ``timm.create_model`` when not None (e.g. drop_rate). A fixed-size
            architecture is built resolution-free (:func:`~fixres.models.sizes.size_kwargs`).
    """
    check_model_name(name)
    kwargs = {**size_kwargs(name), **{k: v for k, v in kwargs.items() if v is not None}}
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except TypeError as e:      # an argument the architecture does not take
        raise FixresError(f"{name} does not take these arguments {sorted(kwargs)}: {str(e).strip()}") from None
    except (OSError, ConnectionError, RuntimeError) as e:
        if pretrained:
            raise FixresError(f"could not get pretrained weights for {name} ({type(e).__name__}); "
                              "without internet, pass a local file with --weights") from None
        raise
    if weights is not None:
        load_weights(model, weights, new_classifier=new_classifier)
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, without executing any pickled code.

    Not ``timm.models.load_state_dict``: up to some 1.0.x release (1.0.3, for one) it calls
    ``torch.load`` without ``weights_only``, so whether a pickle can run code depends on
    torch's default, which ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` turns off; and it prefers
    EMA weights where we take ``state_dict`` first. We read the file ourselves, a torch file
    with ``weights_only=True`` only, and let timm strip the wrapper prefixes.
    """
    path = Path(path)
    if not path.is_file():
        raise FixresError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise FixresError(f"{path} is not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors of many kinds: none is safe to retry
        raise FixresError(f"refusing to load {path}: not a safetensors file and not loadable with "
                          f"weights_only=True ({type(e).__name__})") from None
    for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FixresError(f"{path} does not hold a state dict of tensors")
    return timm.models.clean_state_dict(obj)      # "module." (DDP); newer timm also "_orig_mod." (compile)


def classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the model's classifier (timm's declared classifier module)."""
    names = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    names = [names] if isinstance(names, str) else list(names or [])
    return {k for k in model.state_dict() if any(k.startswith(n + ".") for n in names)}


def load_weights(model: nn.Module, path: str | Path, *, strict: bool = True, new_classifier: bool = False) -> list[str]:
    """Load a weights file into ``model``; returns the classifier keys left re-initialised.

    A classifier whose shape differs (another number of classes), or any classifier with
    ``new_classifier``, is skipped, as timm does for pretrained weights; any other
    missing, unexpected or mis-shaped tensor is an error.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    head = classifier_keys(model)
    skipped = [k for k in head if k in state and (new_classifier or state[k].shape != own[k].shape)]
    for k in skipped:
        del state[k]
    missing = [k for k in own if k not in state and k not in skipped]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    if strict and (missing or unexpected or wrong):
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                problems.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise FixresError(f"{path} does not fit model {getattr(model, 'pretrained_cfg', {}).get('architecture', '?')}: "
                          + ", ".join(problems))
    model.load_state_dict(state, strict=False)
    return skipped
