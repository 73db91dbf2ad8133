"""Which layers an adaptation touches, and one helper that sets what trains and what re-estimates.

Discovery is generic (STYLE #6: one function per idea, not per architecture):

* the classifier is the module timm declares in ``pretrained_cfg["classifier"]`` (else the
  module ``get_classifier()`` returns), checked to exist and hold parameters;
* the paper's "batch-norm that precedes the global pooling" is the *last normalisation
  layer called before the classifier*, of any kind, read from forward hooks on a tiny input
  (execution order, not names);
* when it is a batch-norm, it is adapted with the batch-norms whose outputs merge with it
  before the pooling (see :func:`fixres.adapt.graph.final_batchnorms`: a projection shortcut
  in the last block);
* when it is another normalisation with affine parameters (a ViT, DeiT, Swin or ConvNeXt's
  ``norm`` / ``fc_norm`` / ``head.norm``; a hybrid's final LayerNorm, CoAtNet's ``norm`` or
  MaxViT's ``head.norm``, after batch-norms in earlier stages), ``fixres`` trains its gamma and
  beta with the classifier (a LayerNorm has no running statistics to re-estimate);
* a model that declares several classifiers (a distilled DeiT: ``head``, ``head_dist``)
  trains all of them; its evaluation is timm's own combination of the heads.

The only per-architecture knowledge is :data:`PAPER_EXCEPTIONS`, the paper's explicit
recipe for PNASNet (its last three cells are fine-tuned with the classifier).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..core.errors import FixresError
from ..models.heads import architecture, declared_classifiers, find_classifier
from .graph import final_batchnorms, trace

METHODS = ("fixres", "bn", "parametric", "head", "full", "tent")

# timm architecture -> modules the paper fine-tunes with the classifier (FixRes section 5, PNASNet-5).
PAPER_EXCEPTIONS: dict[str, tuple[str, ...]] = {
    "pnasnet5large": ("cell_9", "cell_10", "cell_11"),
}

NO_NORM_NOTE = "no normalisation layer before the classifier: fixres adapts the classifier only"


def is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, _BatchNorm)


def is_affine_norm(module: nn.Module) -> bool:
    """A normalisation layer other than batch-norm with learnt gamma/beta (LayerNorm, its 2-D
    variants, GroupNorm, RMSNorm, timm's own)."""
    return ("Norm" in type(module).__name__ and not isinstance(module, _BatchNorm)
            and isinstance(getattr(module, "weight", None), nn.Parameter))


def _probe_input(model: nn.Module) -> torch.Tensor:
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    return torch.zeros(1, 3, 64, 64, device=device)


def execution_order(model: nn.Module, classifier: str, kind=is_batchnorm) -> list[str]:
    """Modules of ``kind`` (batch-norms by default) in the order they are called before the
    classifier's first call.

    Runs the model once in eval mode on a 64-pixel input (any device, ``meta`` included);
    models that refuse 64 pixels are probed at their configured input size.
    """
    order: list[str] = []
    done = []

    def hook(name, is_classifier):
        def record(module, args, output):
            if is_classifier:
                done.append(True)
            elif not done:
                order.append(name)
        return record

    handles = [m.register_forward_hook(hook(n, n == classifier)) for n, m in model.named_modules()
               if kind(m) or n == classifier]
    was_training = model.training
    model.eval()
    try:
        x = _probe_input(model)
        with torch.no_grad():
            try:
                model(x)
            except (RuntimeError, AssertionError):     # a fixed-size model at another size
                size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))
                order.clear()
                done.clear()
                model(torch.zeros(1, *size, device=x.device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return order


def is_norm(module: nn.Module) -> bool:
    return is_batchnorm(module) or is_affine_norm(module)


def find_adaptable_layers(model: nn.Module, *, classifier_module: str | None = None,
                          bn_module: tuple[str, ...] | None = None) -> tuple[str, tuple[str, ...]]:
    """``(classifier_name, bn_names)``: the classifier and the batch-norm(s) before the pooling.

    ``bn_names`` is empty when the last normalisation before the classifier is not a batch-norm
    (a ViT, a ConvNeXt; a hybrid such as CoAtNet or MaxViT, whose batch-norms sit in earlier
    stages and whose final norm is a LayerNorm: see :func:`final_norm`). ``bn_module`` /
    ``classifier_module`` override discovery (checked to exist and to be of the right kind).
    """
    return _discover(model, classifier_module, bn_module)[:2]


def _discover(model: nn.Module, classifier_module: str | None,
              bn_module: tuple[str, ...] | None) -> tuple[str, tuple[str, ...], str | None]:
    """``(classifier, final batch-norms, final affine norm)``: of the normalisations called before
    the classifier (one probe, execution order), the LAST one is the paper's "batch-norm that
    precedes the global pooling": a batch-norm (with those summed with it) or another norm."""
    classifier = find_classifier(model, classifier_module)
    modules = dict(model.named_modules())
    if bn_module:
        for name in bn_module:
            if name not in modules:
                raise FixresError(f"--bn-module {name!r}: no such module in {architecture(model)}")
            if not isinstance(modules[name], _BatchNorm):
                raise FixresError(f"--bn-module {name!r} is a {type(modules[name]).__name__}, not a batch-norm")
        return classifier, tuple(bn_module), None
    order = execution_order(model, classifier, kind=is_norm)
    if not order:
        return classifier, (), None
    last = order[-1]
    if not is_batchnorm(modules[last]):
        return classifier, (), last
    try:
        names = final_batchnorms(trace(model, frozenset({classifier})), last)
    except Exception:  # untraceable: the last batch-norm called is still right for most models
        names = [last]
    return classifier, tuple(names), None


@dataclass(frozen=True)
class Plan:
    """What one adaptation touches.

    Attributes:
        method: one of :data:`METHODS`.
        classifier: the classifier module's name.
        batch_norms: batch-norms whose statistics are re-estimated (``fixres``, ``bn``).
        trainable: modules whose parameters get gradients ("" = the whole model).
        train_mode: modules kept in train mode during training ("" = the whole model).
        bn_affine: the batch-norms' gamma/beta train too.
        notes: what the user should know (printed and recorded).
    """

    method: str
    classifier: str
    batch_norms: tuple[str, ...]
    trainable: tuple[str, ...]
    train_mode: tuple[str, ...]
    bn_affine: bool = False
    notes: tuple[str, ...] = ()
    classifiers: tuple[str, ...] = ()    # every head that trains (a distilled DeiT: head, head_dist)
    norms: tuple[str, ...] = ()          # no batch-norm: the final normalisation whose gamma/beta train

    @property
    def adapted(self) -> frozenset[str]:
        """Modules whose computation changes during training (the graph is cut below them)."""
        return frozenset(self.trainable) | frozenset(self.train_mode)

    def row(self) -> dict:
        return {"classifier": self.classifier, "classifiers": list(self.classifiers or (self.classifier,)),
                "batch_norms": list(self.batch_norms), "norms": list(self.norms), "trainable": list(self.trainable),
                "train_mode": list(self.train_mode), "bn_affine": self.bn_affine}


def final_norm(model: nn.Module, classifier: str) -> str | None:
    """The last normalisation layer called before the classifier when it has affine parameters
    and is not a batch-norm (the LayerNorm analogue of the paper's last batch-norm), or None."""
    order = execution_order(model, classifier, kind=is_norm)
    return order[-1] if order and is_affine_norm(model.get_submodule(order[-1])) else None


def make_plan(model: nn.Module, method: str, *, train_bn_affine: bool = False, all_bn: bool = False,
              bn_module: tuple[str, ...] | None = None, classifier_module: str | None = None) -> Plan:
    """Decide the layers for ``method`` (see docs/adapt.md for the table, per model family)."""
    if method not in METHODS:
        raise FixresError(f"unknown adaptation method {method!r}; choose one of {', '.join(METHODS)}")
    classifier, bns, norm = _discover(model, classifier_module, bn_module)
    heads = (classifier,) if classifier_module else tuple(declared_classifiers(model)) or (classifier,)
    name = architecture(model)
    if method == "bn":
        if all_bn:
            bns = tuple(n for n, m in model.named_modules() if isinstance(m, _BatchNorm))
        if not bns:
            if not any(is_batchnorm(m) for m in model.modules()):
                raise FixresError(f"{name} has no batch-norm to re-estimate (method bn); use --method fixres (the "
                                  "classifier and the final normalisation's gamma/beta) or parametric (label-free)")
            raise FixresError(f"{name}: its last normalisation before the pooling, {norm} "
                              f"({type(model.get_submodule(norm)).__name__}), has no running statistics to "
                              "re-estimate (method bn); use --method fixres (the classifier and its gamma/beta), "
                              "--all-bn to re-estimate every batch-norm, or name one with --bn-module")
        return Plan(method, classifier, bns, (), (), classifiers=heads)
    if method == "parametric":
        if len(heads) > 1:
            raise FixresError(f"the parametric method equalises one classifier's input; {name} has {len(heads)} "
                              f"({', '.join(heads)}): use --method fixres or head")
        return Plan(method, classifier, (), (), (), classifiers=heads)
    if method == "head":
        return Plan(method, classifier, (), heads, (), classifiers=heads)
    if method == "tent":
        return tent_plan(model, classifier, heads)
    if method == "full":
        return Plan(method, classifier, (), ("",), ("",), classifiers=heads,
                    notes=("full: every layer trains; all batch-norms re-estimate their statistics",))
    cells = PAPER_EXCEPTIONS.get(name, ())
    if cells and not bn_module:
        return Plan(method, classifier, tuple(bns), (*heads, *cells), (*bns, *cells), classifiers=heads,
                    notes=(f"{name}: the paper's recipe fine-tunes {', '.join(cells)} and the classifier",))
    if bns:
        affine = tuple(bns) if train_bn_affine else ()
        return Plan(method, classifier, tuple(bns), (*heads, *affine), tuple(bns), bn_affine=train_bn_affine,
                    classifiers=heads)
    if norm is None:
        return Plan(method, classifier, (), heads, (), classifiers=heads, notes=(NO_NORM_NOTE,))
    kind = type(model.get_submodule(norm)).__name__
    where = ("no batch-norm" if not any(is_batchnorm(m) for m in model.modules())
             else "its batch-norms come before a later normalisation")
    return Plan(method, classifier, (), (*heads, norm), (), classifiers=heads, norms=(norm,),
                notes=(f"{where}: fixres trains the classifier{'s' if len(heads) > 1 else ''} and the gamma/beta "
                       f"of {norm} ({kind}, the last normalisation before the pooling: the paper's last batch-norm; "
                       "it has no running statistics to re-estimate)",))


def tent_plan(model: nn.Module, classifier: str, heads: tuple[str, ...]) -> Plan:
    """Tent's layers: the gamma/beta of every normalisation train; every batch-norm normalises
    with the statistics of the batch (train mode) and re-estimates its running ones at the end."""
    affine = tuple(n for n, m in model.named_modules()
                   if (is_batchnorm(m) and m.affine) or is_affine_norm(m))
    if not affine:
        raise FixresError(f"{architecture(model)} has no normalisation layer with affine parameters (gamma/beta): "
                          "tent has nothing to adapt; use --method bn (batch-norm statistics) or parametric")
    bns = tuple(n for n, m in model.named_modules() if is_batchnorm(m))
    return Plan("tent", classifier, bns, affine, bns, classifiers=heads,
                norms=tuple(n for n in affine if n not in bns),
                notes=(f"tent: entropy minimisation on the gamma/beta of {len(affine)} normalisation layer(s)"
                       + (f"; {len(bns)} batch-norm(s) normalise with each batch's statistics, their running ones "
                          "re-estimated on the unlabelled images at the end" if bns else ""),))


def _module(model: nn.Module, name: str) -> nn.Module:
    return model if name == "" else model.get_submodule(name)


def freeze_for(model: nn.Module, plan: Plan) -> list[nn.Parameter]:
    """Set ``requires_grad`` on *parameters* (never on modules): only the plan's trainable
    ones (the batch-norms' gamma/beta only with ``plan.bn_affine``). Returns them."""
    for p in model.parameters():
        p.requires_grad_(False)
    for name in plan.trainable:      # the batch-norms are listed here only with bn_affine
        for p in _module(model, name).parameters():
            p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def set_modes(model: nn.Module, plan: Plan) -> None:
    """Everything in eval mode except the plan's train-mode modules."""
    model.eval()
    for name in plan.train_mode:
        _module(model, name).train()


def batchnorms_in(model: nn.Module, names: tuple[str, ...]) -> list[_BatchNorm]:
    """Every batch-norm module inside (or equal to) the named modules."""
    found = {}
    for name in names:
        for m in _module(model, name).modules():
            if isinstance(m, _BatchNorm):
                found[id(m)] = m
    return list(found.values())
