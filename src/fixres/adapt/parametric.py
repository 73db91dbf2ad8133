"""Parametric adaptation (paper section 4): equalise the pooled features with two Frechet laws.

The distribution of the pooled features (the classifier's input) is fitted at the train
geometry (training images, RandomResizedCrop at K_train) and at the test geometry (the
same images, test preprocessing at K_test) by a generalised extreme value law with the
shape fixed at xi = 0.3 (a Frechet law)::

    G(x) = exp(-z^(-1/xi)),  z = 1 + xi (x - mu) / sigma > 0    (G = 0 below the support)
    G^-1(p) = mu + sigma ((-ln p)^(-xi) - 1) / xi

and every component is mapped by ``x' = F_train^-1(F_test(x))``. One law per geometry is
fitted to all components together (the paper's histogram), by maximum likelihood on
(mu, sigma) with xi fixed.

Zeros: after a ReLU and an average, a component is exactly 0 when the channel is zero at
every position, a point mass that no continuous law fits, and its weight changes with the
resolution (fewer zeros at higher resolution). We model each distribution as a mixture:
a mass ``p0`` at values <= 0 and a Frechet law ``G`` fitted to the positive values, so
``F(x) = p0 + (1 - p0) G(x)`` for ``x > 0``. A positive test value maps to
``G_train^-1((F_test(x) - p0_train) / (1 - p0_train))``, or to 0 when ``F_test(x) <=
p0_train``; values <= 0 are left unchanged (they cannot be ranked within the point mass).

The map is applied by a forward pre-hook on the classifier: the state-dict keys do not
change, and :func:`~fixres.models.equaliser.reapply_adaptation` (called when a checkpoint is
opened) attaches it again from ``meta.adaptation["equaliser"]``. The map itself lives in
:mod:`fixres.models.equaliser`; this module fits it.
"""
from __future__ import annotations

import math

import torch

from ..core.errors import FixresError
from ..models.equaliser import XI, Equaliser, Law


def fit_gev(x: torch.Tensor, xi: float = XI) -> tuple[float, float]:
    """Maximum-likelihood ``(mu, sigma)`` of a GEV law with shape ``xi`` (> 0) for samples ``x``.

    The lower end of the support, ``mu - sigma / xi``, is kept below the smallest sample
    by the parametrisation; the start is the method of moments (xi < 0.5).
    """
    x = x.detach().double().flatten()
    if x.numel() < 3 or not x.std() > 0:
        raise FixresError(f"cannot fit a Frechet law to {x.numel()} values without spread")
    lo, scale = x.min(), x.std()
    g1, g2 = math.gamma(1 - xi), math.gamma(1 - 2 * xi)
    sigma0 = scale.item() * xi / math.sqrt(g2 - g1 ** 2)
    bound0 = x.mean().item() - sigma0 * (g1 - 1) / xi - sigma0 / xi
    gap0 = max(lo.item() - bound0, 1e-3 * scale.item())
    t = torch.tensor([math.log(gap0 / scale.item()), math.log(sigma0 / scale.item())], dtype=torch.float64,
                     requires_grad=True)

    def nll():
        bound, sigma = lo - torch.exp(t[0]) * scale, torch.exp(t[1]) * scale
        z = xi * (x - bound) / sigma
        return (torch.log(sigma) + (1 + 1 / xi) * torch.log(z) + z ** (-1 / xi)).mean()

    opt = torch.optim.LBFGS([t], max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nll()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        bound, sigma = lo - torch.exp(t[0]) * scale, torch.exp(t[1]) * scale
    return (bound + sigma / xi).item(), sigma.item()


def fit_law(values: torch.Tensor, xi: float = XI) -> Law:
    values = values.detach().double().flatten()
    positive = values[values > 0]
    if positive.numel() < 3:
        raise FixresError("the pooled features are almost all <= 0: the Frechet equalisation needs positive "
                          "(post-ReLU) features")
    mu, sigma = fit_gev(positive, xi)
    return Law(mu, sigma, 1 - positive.numel() / values.numel(), values.numel())


def fit_equaliser(train_features: torch.Tensor, test_features: torch.Tensor, xi: float = XI) -> Equaliser:
    return Equaliser(fit_law(train_features, xi), fit_law(test_features, xi), xi)


