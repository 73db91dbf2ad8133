"""The model as a graph: which batch-norms feed the pooling, and a split at the adapted layers.

A timm CNN is traced with :mod:`torch.fx` into a graph of calls. Two questions are then
answered on the data flow rather than on module names:

* :func:`final_batchnorms`: the batch-norms whose outputs are summed or concatenated into
  the tensor that is pooled. In a ResNet whose last block has an identity shortcut this is
  the block's last batch-norm alone; when the last block has a projection shortcut (timm's
  ``test_resnet``, ``resnet10t``) it is that batch-norm *and* the shortcut's, whose sum the
  pooling averages; in a PNASNet cell it is the last batch-norm of every branch.
* :func:`split_graph`: two graph modules, ``bottom(x) -> crossing tensors`` (everything that
  does not depend on an adapted layer) and ``top(*crossing) -> logits``. Every tensor that
  crosses the cut is an input of ``top`` (a residual shortcut as well as the adapted
  batch-norm's input), so ``top(*bottom(x))`` computes exactly ``model(x)``; the two share
  the model's parameters and buffers (no copy).

The tracer keeps every batch-norm, every adapted module and timm's own non-traceable
modules as opaque calls, so their train/eval mode is read when they run. Python code that
reads ``self.training`` elsewhere is frozen at trace time: models are traced in eval mode,
which is the mode of every module that is not adapted.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def _timm_notrace() -> tuple[tuple, tuple]:
    """timm's registries of modules and functions that symbolic tracing must not enter."""
    try:
        from timm.layers import _fx as registry
    except ImportError:  # older timm kept them here
        from timm.models import _features_fx as registry
    return tuple(registry.get_notrace_modules()), tuple(registry.get_notrace_functions())


class _Tracer(fx.Tracer):
    def __init__(self, leaves: frozenset[str]):
        modules, functions = _timm_notrace()
        super().__init__(autowrap_functions=functions)
        self.leaves, self.notrace = leaves, modules

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return (qualified_name in self.leaves or isinstance(m, _BatchNorm) or isinstance(m, self.notrace)
                or super().is_leaf_module(m, qualified_name))


def trace(model: nn.Module, leaves: frozenset[str] = frozenset()) -> fx.GraphModule:
    """Symbolically trace ``model`` (in eval mode) keeping ``leaves`` and batch-norms opaque.

    Raises whatever torch.fx raises for an untraceable model; callers fall back.
    """
    was_training = model.training
    model.eval()
    try:
        fixed = _defaults_after_input(model)
        graph = _Tracer(frozenset(leaves)).trace(model, concrete_args=fixed)
    finally:
        model.train(was_training)
    if fixed:
        _drop_fixed_inputs(graph)
    return fx.GraphModule(model, graph)


def _drop_fixed_inputs(graph: fx.Graph) -> None:
    """Erase the placeholders of the arguments fixed at trace time and the guards torch.fx
    hangs on them (``_assert_is_none(attn_mask)``...), when nothing else uses them: the
    graph then takes the image alone. Left as it is otherwise (the split refuses it)."""
    fixed = [n for n in graph.nodes if n.op == "placeholder"][1:]
    doomed = _closure(fixed, lambda n: n.users)
    if any(n.op == "output" or any(u not in doomed for u in n.users) for n in doomed):
        return
    for n in reversed(list(graph.nodes)):
        if n in doomed:
            graph.erase_node(n)


def _defaults_after_input(model: nn.Module) -> dict | None:
    """The forward's optional arguments after the image, fixed to their defaults (a timm ViT
    takes ``attn_mask=None, is_causal=False``): the traced graph then has the one input that
    inference gives it."""
    params = list(inspect.signature(model.forward).parameters.values())[1:]
    fixed = {p.name: p.default for p in params
             if p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD}
    return fixed or None


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _closure(start, step) -> set:
    seen, stack = set(), list(start)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(step(n))
    return seen


def final_batchnorms(gm: fx.GraphModule, anchor: str) -> list[str]:
    """Names of the batch-norms whose outputs merge with ``anchor``'s before any layer with
    parameters (the pooling and element-wise sums/concatenations are parameter free),
    excluding those that feed ``anchor`` itself; in execution order, ``anchor`` included.
    """
    modules = dict(gm.named_modules())
    nodes = list(gm.graph.nodes)

    def passes(n: fx.Node) -> bool:  # data flows through n without meeting a parametrised layer
        return n.op not in ("output", "placeholder") and not (n.op == "call_module" and _has_state(modules[n.target]))

    anchors = [n for n in nodes if n.op == "call_module" and n.target == anchor]
    if not anchors:
        return [anchor]
    a = anchors[-1]
    region = _closure([u for u in a.users if passes(u)], lambda n: [u for u in n.users if passes(u)])
    upstream = _closure(a.all_input_nodes, lambda n: n.all_input_nodes)
    found = []
    for n in nodes:
        if n.op != "call_module" or not isinstance(modules[n.target], _BatchNorm) or n in upstream:
            continue
        reach = _closure([u for u in n.users if passes(u)], lambda m: [u for u in m.users if passes(u)])
        if n is a or reach & region:
            found.append(n.target)
    return list(dict.fromkeys(found))


@dataclass
class Split:
    """``top(*bottom(x)) == model(x)``; ``crossing`` names the tensors cached between them."""

    bottom: fx.GraphModule
    top: fx.GraphModule
    crossing: tuple[str, ...]


def split_graph(model: nn.Module, adapted: frozenset[str]) -> tuple[Split | None, str]:
    """Cut ``model`` below the modules named in ``adapted``.

    The top is every call that depends on an adapted module's output; the bottom is the
    rest. Calls that depend on no input at all (constants, parameters read directly) are
    recomputed in the top when it needs them. Returns ``(split, "")`` or ``(None, reason)``.
    """
    adapted = frozenset(a for a in adapted if not any(a.startswith(b + ".") for b in adapted))  # outermost only
    try:
        gm = trace(model, adapted)
    except Exception as e:  # torch.fx raises many kinds of errors on untraceable code
        return None, f"the model cannot be traced by torch.fx ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    nodes = list(gm.graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return None, f"the traced model takes {len(inputs)} inputs, expected 1"
    starts = [n for n in nodes if n.op == "call_module" and n.target in adapted]
    missing = sorted(set(adapted) - {n.target for n in starts})
    if missing:
        return None, f"module {missing[0]} is not called as one unit in the traced graph"
    top = _closure(starts, lambda n: n.users)
    dynamic = _closure(inputs, lambda n: n.users)
    crossing = [n for n in nodes if n not in top and n in dynamic and any(u in top for u in n.users)]
    if not crossing:
        return None, "the adapted layers do not depend on the input"

    bottom_graph, env = fx.Graph(), {}
    for n in nodes:
        if n not in top and n.op != "output":
            env[n] = bottom_graph.node_copy(n, lambda a: env[a])
    bottom_graph.output(tuple(env[c] for c in crossing))

    top_graph, env = fx.Graph(), {}
    for c in crossing:
        env[c] = top_graph.placeholder(c.name)
    for n in nodes:
        if n in env or (n not in top and n in dynamic):
            continue
        env[n] = top_graph.node_copy(n, lambda a: env[a])   # top nodes and input-independent ones
    return Split(_module(model, bottom_graph), _module(model, top_graph), tuple(c.name for c in crossing)), ""


def _module(model: nn.Module, graph: fx.Graph) -> fx.GraphModule:
    gm = fx.GraphModule(model, graph)   # shares the model's submodules, parameters and buffers
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


@torch.no_grad()
def check_split(model: nn.Module, split: Split, x: torch.Tensor) -> str:
    """``""`` if ``top(*bottom(x))`` equals ``model(x)`` on the probe batch ``x`` (eval mode)
    and every crossing tensor is per-image (leading dimension = batch), else the reason."""
    was_training = model.training
    model.eval()
    try:
        crossing = split.bottom(x)
        for name, t in zip(split.crossing, crossing):
            if not isinstance(t, torch.Tensor) or t.ndim == 0 or t.shape[0] != x.shape[0]:
                return f"the tensor {name} crossing the cut is not one row per image"
        ours, reference = split.top(*crossing), model(x)
    finally:
        model.train(was_training)
    if not isinstance(ours, torch.Tensor) or ours.shape != reference.shape:
        return "the split model's output differs in type or shape from the model's"
    if not torch.allclose(ours.float(), reference.float(), rtol=1e-4, atol=1e-5):
        diff = (ours.float() - reference.float()).abs().max().item()
        return f"the split model's output differs from the model's (max abs difference {diff:.3g})"
    return ""
