"""The apparent-size histogram (the idea of the paper's figure 2)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.transforms import DEFAULT_CROP_PCT, DEFAULT_RATIO, DEFAULT_SCALE, eval_geometry
from .geometry import STATISTICS, Prediction, crop_extents, predict_test_res

TICKS = (0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.0, 10.0)


def _mean(x: np.ndarray, statistic: str) -> float:
    p = STATISTICS[statistic][0]
    return float(np.exp(np.log(x).mean())) if p == 0 else float(np.mean(x ** p) ** (1 / p))


def plot_apparent_size(path: str | Path, train_res: int, *, scale=DEFAULT_SCALE, ratio=DEFAULT_RATIO,
                       crop_pct: float = DEFAULT_CROP_PCT, sizes=None, statistic: str = "mean-ratio",
                       samples: int = 200_000, seed: int = 0, source: str | None = None) -> Prediction:
    """Write a PNG histogram of ``z_test / z_train`` at ``K_test = K_train`` and at the prediction.

    Both histograms come from the same draws of the crop extent (:func:`crop_extents`; with
    ``sizes=None`` the idealised sampler of the closed form), on a log axis where changing
    ``K_test`` only shifts the histogram. Arguments as in :func:`predict_test_res`.

    Returns:
        The prediction drawn in the figure.
    """
    from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullFormatter

    from ..core.plots import PALETTE, new_figure, save, styled

    pred = predict_test_res(train_res, scale=scale, ratio=ratio, crop_pct=crop_pct, sizes=sizes,
                            statistic=statistic, samples=samples, seed=seed, source=source)
    u, _ = crop_extents(pred.scale, pred.ratio, sizes, samples, seed)
    curves = [(train_res, f"K_test = K_train = {train_res}", PALETTE[0]),
              (pred.test_res, f"K_test = {pred.test_res} (predicted)", PALETTE[1])]
    draws = [(k, label, colour, eval_geometry(k, pred.crop_pct)[0] * u / train_res) for k, label, colour in curves]
    lo = min(float(d.min()) for *_, d in draws)
    hi = max(float(d.max()) for *_, d in draws)
    bins = np.geomspace(lo * 0.98, hi * 1.02, 80)
    with styled():
        fig, ax = new_figure(6.4, 4.0)
        for k, label, colour, x in draws:
            m = _mean(x, statistic)
            ax.hist(x, bins=bins, weights=np.full(len(x), 100 / len(x)), histtype="stepfilled", alpha=0.35,
                    color=colour,
                    label=f"{label}: {statistic} {m:.3f}")
            ax.axvline(m, color=colour, linestyle="--", linewidth=1.2)
        ax.axvline(1.0, color="#555555", linestyle=":", linewidth=1.2, label="same apparent size")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator([t for t in TICKS if lo * 0.98 <= t <= hi * 1.02]))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("apparent object size at test / at train  (z_test / z_train)")
        ax.set_ylabel("% of draws per bin (equal log widths)")
        sampler = "idealised sampler, square images" if pred.closed_form else (
            f"torchvision sampler, {pred.source}")
        ax.set_title(f"Train {train_res}px, RandomResizedCrop scale {pred.scale[0]:g}-{pred.scale[1]:g}, "
                     f"crop_pct {pred.crop_pct:g}\n({sampler}; geometric model only)")
        ax.legend(loc="upper left", frameon=False)
        save(fig, path)
    return pred
