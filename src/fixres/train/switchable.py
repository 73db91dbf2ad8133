"""Resolution-switchable training, the RS-Nets baseline (Wang, Sun, Li, Yao, ECCV 2020): one
network whose convolution and classifier weights are shared by several training resolutions,
with PRIVATE batch-norms per resolution; every step sums the losses of every resolution.

RS-Nets' basic framework, without its multi-resolution ensemble distillation (not implemented:
the learnt teacher needs a second loss and a weight per resolution). Each step's batch is
cropped once at the largest resolution (RandomResizedCrop, the run's recipe: erasing, mixup) and
resized to each smaller one (bilinear, antialiased), as RS-Nets feeds one crop at every size.

A switchable run's checkpoints hold every path (``<bn>.paths.<i>.<tensor>``) so it resumes
exactly; :func:`collapse` reads one path as the plain architecture's weights, which is how
every command opens such a checkpoint (the largest resolution's path), and the run ends by
writing ``RUN/ladder``: the base = the largest path, a rung per resolution = its batch-norms.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..models.switchable_state import collapse, path_tensors



class SwitchableBatchNorm(nn.Module):
    """A batch-norm per resolution; ``active`` says which one runs."""

    def __init__(self, bn: _BatchNorm, paths: int):
        super().__init__()
        self.paths = nn.ModuleList(copy.deepcopy(bn) for _ in range(paths))
        self.active = paths - 1

    def forward(self, x):
        return self.paths[self.active](x)


def make_switchable(model: nn.Module, paths: int) -> nn.Module:
    """Replace every batch-norm of ``model`` (in place) by a :class:`SwitchableBatchNorm` of
    ``paths`` copies; the last path is active (the largest resolution)."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, _BatchNorm):
                setattr(module, child_name, SwitchableBatchNorm(child, paths))
    return model


def switchables(model: nn.Module) -> list[SwitchableBatchNorm]:
    return [m for m in model.modules() if isinstance(m, SwitchableBatchNorm)]


def set_path(model: nn.Module, index: int) -> None:
    for m in switchables(model):
        m.active = index


def resized(images: torch.Tensor, res: int) -> torch.Tensor:
    """A normalised batch at another resolution (bilinear, antialiased when shrinking)."""
    if images.shape[-1] == res:
        return images
    return F.interpolate(images, size=(res, res), mode="bilinear", antialias=True, align_corners=False)


def write_switchable_ladder(out, model: nn.Module, meta, paths: tuple[int, ...], val, held, prep, rt) -> None:
    """``RUN/ladder`` of a switchable run: each path evaluated at its own resolution on val (and on
    the held-out training images, where a budget rule chooses), costed, and written as a ladder
    whose base is the largest path and whose rungs are each path's batch-norms. Every rank takes
    part in the evaluations; the main one writes."""
    from ..measure.costs import resolution_costs
    from ..measure.infer import evaluate
    from ..models.ladder import LADDER_FORMAT, RUNGS, write_ladder
    from ..version import __version__
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    plain = type(model)  # the architecture, rebuilt plain for the base and the costs
    base_model = _plain_copy(model, collapse(state, -1))
    costs = resolution_costs(base_model, meta, list(paths))
    rungs, entries = [], []
    for i, res in enumerate(paths):
        set_path(model, i)
        at = prep.override(f"switchable path {res}px", test_res=res, train_res=res)
        after, _ = evaluate(model, val, at, rt, label=f"path {res}px val")
        selection = evaluate(model, held, at, rt, label=f"path {res}px held-out")[0] if len(held) else after
        report = {"method": "switchable", "test_res": res, "crop_pct": at.crop_pct, "paths": list(paths),
                  "after": after.row(), "note": "RS-Nets' basic framework: shared weights, this resolution's private "
                                                "batch-norms, trained jointly"}
        rung_meta = meta.replace(preprocessing=at, adaptation=report, metrics={f"val_{k}": v for k, v in
                                                                               after.row().items()})
        tensors = path_tensors(state, i)
        rungs.append((rung_meta, tensors))
        entries.append({"test_res": res, "crop_pct": at.crop_pct, "resize": at.test_view().resize_size,
                        "dir": f"{RUNGS}/{res}", "method": "switchable", "before": after.row(), "after": after.row(),
                        "selection_split": "holdout" if len(held) else "val", "selection_top1": selection.top1,
                        "tensors": len(tensors), "bytes": sum(v.numel() * v.element_size() for v in tensors.values()),
                        "equaliser": False, **costs[res].fields()})
    set_path(model, len(paths) - 1)
    record = {"format": LADDER_FORMAT, "fixres_version": __version__, "model": meta.model,
              "classes": meta.num_classes, "method": "switchable", "source": str(out.parent), "base": "base",
              "base_bytes": sum(v.numel() * v.element_size() for v in base_model.state_dict().values()),
              "shared_passes": "trained jointly (RS-Nets); each path evaluated on its own", "rungs": entries,
              "selection": {"split": entries[0]["selection_split"], "note": ""},
              "budget_rule": "the rung of highest selection_top1 among those within the budgets", "timing": None,
              "device": str(rt.device), "architecture": plain.__name__}
    if rt.dist.is_main:
        write_ladder(out, base_model, meta, rungs, record, overwrite=True)


def _plain_copy(model: nn.Module, state: dict) -> nn.Module:
    """The architecture without switchable batch-norms, holding ``state`` (the largest path)."""
    plain = copy.deepcopy(model).cpu()
    for name, module in list(plain.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, SwitchableBatchNorm):
                setattr(module, child_name, child.paths[-1])
    plain.load_state_dict(state)
    return plain
