"""The FixRes paper's architectures that timm does not register itself.

timm (1.0.31 at least) still declares the pretrained config of
``resnext101_32x48d.fb_wsl_ig1b_ft_in1k`` (Mahajan et al. 2018, weakly supervised on 940M
images) but registers no model function for it: the architecture is ResNeXt-101 32x32d's
with a base width of 48. Importing :mod:`fixres.models` registers it, so that the name
works everywhere fixres (or timm, afterwards) creates a model.
"""
from __future__ import annotations

import timm
from timm.models import build_model_with_cfg, register_model
from timm.models import resnet as _timm_resnet

RESNEXT_WSL = "resnext101_32x48d"
default_cfgs = {RESNEXT_WSL: _timm_resnet.default_cfgs[RESNEXT_WSL]} if RESNEXT_WSL in getattr(
    _timm_resnet, "default_cfgs", {}) else {}


def resnext101_32x48d(pretrained: bool = False, **kwargs):
    """ResNeXt-101 32x48d (829M parameters), the FixRes paper's largest model."""
    args = dict(block=_timm_resnet.Bottleneck, layers=(3, 4, 23, 3), cardinality=32, base_width=48)
    return build_model_with_cfg(_timm_resnet.ResNet, RESNEXT_WSL, pretrained, **dict(args, **kwargs))


def register_paper_models() -> None:
    """Make ``resnext101_32x48d`` (and its ``.fb_wsl_ig1b_ft_in1k`` tag) creatable when timm lacks it."""
    if default_cfgs and not timm.is_model(RESNEXT_WSL):
        register_model(resnext101_32x48d)


register_paper_models()
