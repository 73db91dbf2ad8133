"""The classifier of a model: where it is, and cutting it down to some of its outputs.

Found from the model's declaration (timm's ``pretrained_cfg["classifier"]``, one module name or
several: a distilled DeiT declares ``head`` and ``head_dist``), else from ``get_classifier()``;
never by guessing names per architecture (STYLE #6).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..core.errors import FixresError


def architecture(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


def declared_classifiers(model: nn.Module) -> list[str]:
    """The classifier module names the model declares (with parameters), in declaration order."""
    modules = dict(model.named_modules())
    declared = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    names = [declared] if isinstance(declared, str) else list(declared or [])
    if not names and hasattr(model, "get_classifier"):
        head = model.get_classifier()
        names = [n for n, m in modules.items() if m is head]
    return [n for n in names if n in modules and any(True for _ in modules[n].parameters())]


def find_classifier(model: nn.Module, override: str | None = None) -> str:
    """Name of the (first) classifier module: the last layer that produces the logits."""
    if override is not None:
        modules = dict(model.named_modules())
        module = modules.get(override)
        if module is None or not any(True for _ in module.parameters()):
            hint = "no such module" if module is None else "it has no parameters"
            raise FixresError(f"--classifier-module {override!r}: {hint} in {architecture(model)}")
        outputs = classifier_outputs(module)
        if outputs is None:
            raise FixresError(f"--classifier-module {override!r} is a {type(module).__name__}, not a classifier (a "
                              "linear layer or 1x1 convolution that produces the logits); name that layer")
        classes = getattr(model, "num_classes", None)
        if classes and outputs != classes:
            raise FixresError(f"--classifier-module {override!r} has {outputs} outputs, the model {classes}: it is "
                              "not the layer that produces the logits")
        return override
    names = declared_classifiers(model)
    if not names:
        raise FixresError(f"cannot find the classifier of {architecture(model)} (no timm pretrained_cfg['classifier'] "
                          "or get_classifier()); name it with --classifier-module")
    return names[0]


def classifier_outputs(module: nn.Module) -> int | None:
    """The outputs of a linear or 1x1-convolution layer (what a classifier is), else None."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
        return module.out_channels
    return None


def _cut(module: nn.Module, kept: torch.Tensor, name: str) -> nn.Module:
    """A copy of a linear (or 1x1 convolution) classifier producing only the ``kept`` outputs."""
    if isinstance(module, nn.Linear):
        new = nn.Linear(module.in_features, len(kept), bias=module.bias is not None)
    elif isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1:
        new = nn.Conv2d(module.in_channels, len(kept), 1, bias=module.bias is not None)
    else:
        raise FixresError(f"cannot restrict the classifier {name!r} ({type(module).__name__}) to some of its outputs: "
                          "only linear and 1x1-convolution classifiers can be cut")
    new = new.to(device=module.weight.device, dtype=module.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(module.weight[kept])
        if module.bias is not None:
            new.bias.copy_(module.bias[kept])
    return new


def restrict_outputs(model: nn.Module, kept: Sequence[int]) -> nn.Module:
    """Keep only the outputs ``kept`` (in that order) of every declared classifier, in place:
    the model then predicts over those classes only (argmax among them), and its state dict is
    that of the same architecture built with ``num_classes=len(kept)``."""
    names = declared_classifiers(model)
    if not names:
        find_classifier(model)          # the one-line error
    index = torch.as_tensor(list(kept), dtype=torch.long)
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, _cut(getattr(parent, attr), index, name))
    if hasattr(model, "num_classes"):
        model.num_classes = len(index)
    return model
