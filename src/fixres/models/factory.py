"""Creating models: any timm model by name, or local weights, with its preprocessing.

Weights come from three places, and only the first touches the network:
``pretrained=True`` (timm downloads them: needs internet), a local weights file
(``.safetensors``, or a torch file read with ``weights_only=True`` -- never unpickled
unsafely), or a fixres checkpoint (see :mod:`fixres.models.checkpoint`).
"""
from __future__ import annotations

import difflib
import re
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
    if weights is not None:
        return model_with_weights(name, read_state_dict(weights), str(weights), num_classes=num_classes,
                                  new_classifier=new_classifier, **kwargs)[0]
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError, AssertionError) as e:      # an argument it does not take, or a wrong value
        raise build_error(name, kwargs, e) from None
    except (OSError, ConnectionError, RuntimeError) as e:
        if pretrained:
            raise FixresError(f"could not get pretrained weights for {name} ({type(e).__name__}); "
                              "without internet, pass a local file with --weights") from None
        raise
    return model


def build_error(name: str, kwargs: dict, error: Exception) -> FixresError:
    """One line for timm refusing to build ``name`` with ``kwargs``: the argument it does not take,
    or that a value is wrong (timm's own message, or the assertion it failed), naming the values."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    unknown = re.search(r"unexpected keyword argument '([^']+)'", text)
    if unknown:
        return FixresError(f"{name} does not take the argument {unknown.group(1)!r} (model_kwargs: {sorted(kwargs)})")
    given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "dynamic_img_size")
    why = text or f"timm's {type(error).__name__} (an assertion on the arguments)"
    return FixresError(f"timm cannot build {name} with {given or 'its defaults'}: a value is not one it accepts "
                       f"({why})")


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


def classifier_size(state: dict[str, torch.Tensor], probe: nn.Module, where: str) -> int:
    """The number of classes of the weights ``state`` for the architecture ``probe``: its declared
    classifier's weight, else (key names timm will convert, e.g. torchvision's ``fc`` for timm's
    ``head.fc``) the last matrix of the file whose inputs are the architecture's features."""
    from .heads import declared_classifiers
    for head in declared_classifiers(probe):
        if f"{head}.weight" in state and state[f"{head}.weight"].ndim == 2:
            return int(state[f"{head}.weight"].shape[0])
    features = getattr(probe, "num_features", None)
    matrices = [v for k, v in state.items() if k.endswith(".weight") and v.ndim == 2
                and (not features or v.shape[1] == features)]
    if not matrices:
        raise FixresError(f"{where} does not fit {architecture_of(probe)}: no classifier weights (no matrix of "
                          f"{features} inputs); {LIKELY_CAUSE}")
    return int(matrices[-1].shape[0])


LIKELY_CAUSE = "likely weights of another architecture, or key names timm does not convert for this one"


def load_summary(error: RuntimeError, where: str, model: str) -> str:
    """One line for a failed strict load (torch's message lists every key): how many tensors are
    missing, unexpected or of another shape, one example, and the likely cause."""
    text = str(error)
    counts, example = [], ""
    for label, pattern in (("missing", r"Missing key\(s\) in state_dict: (.*?)\.\s*(?:\n|$)"),
                           ("unexpected", r"Unexpected key\(s\) in state_dict: (.*?)\.\s*(?:\n|$)")):
        found = re.search(pattern, text, re.S)
        keys = re.findall(r'"([^"]+)"', found.group(1)) if found else []
        if keys:
            counts.append(f"{len(keys)} {label}")
            example = example or keys[0]
    shapes = re.findall(r"size mismatch for ([^:]+):", text)
    if shapes:
        counts.append(f"{len(shapes)} of another shape")
        example = example or shapes[0]
    if not counts:
        first = text.strip().splitlines()[-1].strip() if text.strip() else type(error).__name__
        return f"{where} does not fit {model}: {first[:200]}"
    cause = ("another width or depth of the architecture (check the tag or --model-kwargs)" if len(counts) == 1 and
             shapes else LIKELY_CAUSE)
    return f"{where} does not fit {model} (tensors: {', '.join(counts)}; e.g. {example}): {cause}"


def architecture_of(model: nn.Module) -> str:
    return (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__


def model_with_weights(name: str, state: dict[str, torch.Tensor], where: str, *, num_classes: int | None = None,
                       new_classifier: bool = False, **kwargs) -> tuple[nn.Module, list[str]]:
    """``name`` with the weights ``state`` (read safely by :func:`read_state_dict`), through
    timm's pretrained-weights loader: its key conversion for the architecture (torchvision's
    names where timm converts them, a ViT's position embedding resampled to the grid it is built
    for), strict. ``num_classes``: a classifier of another size (or any, with ``new_classifier``)
    is re-initialised afterwards, as timm does for pretrained weights. Returns the model and
    the classifier keys re-initialised; a file that does not fit is one line (:func:`load_summary`)."""
    import warnings
    kwargs = {**size_kwargs(name), **{k: v for k, v in kwargs.items() if v is not None}}
    with torch.device("meta"):
        probe = timm.create_model(name, pretrained=False, **kwargs)
    size = classifier_size(state, probe, where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # timm's notes on key conversions; the meta device's no-op copies
            model = timm.create_model(name, pretrained=True, num_classes=size, **kwargs,
                                      pretrained_cfg_overlay={"state_dict": state, "num_classes": size})
    except (TypeError, ValueError, AssertionError) as e:
        raise build_error(name, kwargs, e) from None
    except RuntimeError as e:
        raise FixresError(load_summary(e, where, name)) from None
    model.pretrained_cfg.pop("state_dict", None)     # do not carry the weights around in the config
    reset: list[str] = []
    if num_classes is not None and (num_classes != size or new_classifier):
        model.reset_classifier(num_classes)
        reset = sorted(classifier_keys(model))
    return model, reset
