"""The parametric equaliser as a model component: ``x -> F_train^-1(F_test(x))`` on the
classifier's input, with the two fitted laws it was made from.

Fitting the laws is :mod:`fixres.adapt.parametric`'s job; applying and re-applying them is
this module's, so that opening a checkpoint (``fixres.models.sources``) needs nothing from the
adaptation package. The map is a forward pre-hook on the classifier: the state-dict keys do
not change, and :func:`reapply_adaptation` attaches it again from
``meta.adaptation["equaliser"]`` whenever a checkpoint is opened.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..core.errors import FixresError

XI = 0.3


def gev_cdf(x: torch.Tensor, mu: float, sigma: float, xi: float = XI) -> torch.Tensor:
    z = 1 + xi * (x - mu) / sigma
    return torch.where(z > 0, torch.exp(-z.clamp(min=1e-300) ** (-1 / xi)), torch.zeros_like(x))


def gev_quantile(p: torch.Tensor, mu: float, sigma: float, xi: float = XI) -> torch.Tensor:
    return mu + sigma * ((-torch.log(p)) ** (-xi) - 1) / xi


@dataclass(frozen=True)
class Law:
    """A mass ``p0`` at values <= 0 and a Frechet law (mu, sigma) for the positive values."""

    mu: float
    sigma: float
    p0: float
    n: int           # values it was fitted to


@dataclass(frozen=True)
class Equaliser:
    """``x -> F_train^-1(F_test(x))`` for each component; called as a forward pre-hook."""

    train: Law
    test: Law
    xi: float = XI

    def map(self, x: torch.Tensor) -> torch.Tensor:
        v = x.double()
        u = self.test.p0 + (1 - self.test.p0) * gev_cdf(v, self.test.mu, self.test.sigma, self.xi)
        w = ((u - self.train.p0) / (1 - self.train.p0)).clamp(max=1 - 1e-12)
        mapped = torch.where(w > 0, gev_quantile(w.clamp(min=1e-300), self.train.mu, self.train.sigma, self.xi),
                             torch.zeros_like(v))
        return torch.where(v > 0, mapped, v).to(x.dtype)

    def __call__(self, module: nn.Module, args: tuple):
        return (self.map(args[0]), *args[1:])

    def record(self, module: str) -> dict:
        return {"module": module, "xi": self.xi, "train": asdict(self.train), "test": asdict(self.test),
                "zeros": "values <= 0 unchanged; positive values mapped through the mixture CDFs"}

    @classmethod
    def from_record(cls, record: dict) -> "Equaliser":
        try:
            return cls(Law(**record["train"]), Law(**record["test"]), float(record["xi"]))
        except (KeyError, TypeError) as e:
            raise FixresError(f"checkpoint metadata: unreadable equaliser record ({e})") from None


def _equaliser_hooks(module: nn.Module) -> list:
    return [key for key, hook in module._forward_pre_hooks.items() if isinstance(hook, Equaliser)]


def attach(model: nn.Module, module: str, equaliser: Equaliser) -> None:
    """Apply ``equaliser`` to the input of ``model.<module>`` (replacing a previous one)."""
    try:
        target = model.get_submodule(module)
    except AttributeError:
        raise FixresError(f"the equaliser's module {module!r} is not in the model") from None
    for key in _equaliser_hooks(target):   # found by type, so this also works on a deep copy of the model
        del target._forward_pre_hooks[key]
    target.register_forward_pre_hook(equaliser)


def detach(model: nn.Module, module: str) -> None:
    """Remove any equaliser from the input of ``model.<module>``."""
    target = model.get_submodule(module)
    for key in _equaliser_hooks(target):
        del target._forward_pre_hooks[key]


def has_equaliser(model: nn.Module) -> bool:
    return any(_equaliser_hooks(m) for m in model.modules())


def reapply_adaptation(model: nn.Module, meta) -> None:
    """Re-attach what a checkpoint's adaptation changed outside its weights (the equaliser)."""
    record = (meta.adaptation or {}).get("equaliser")
    if record:
        attach(model, record["module"], Equaliser.from_record(record))
