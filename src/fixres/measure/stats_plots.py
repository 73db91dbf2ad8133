"""Figures of :mod:`fixres.measure.stats`: the pooled-feature distributions against test resolution.

:func:`plot_cdfs` draws the CDF of all pooled values per test resolution, one panel per
checkpoint; :func:`plot_vs_resolution` draws summary statistics and distances against test
resolution. Both read a :class:`~fixres.measure.stats.StatsResult` (its ``values`` hold the sorted
feature values) and write atomically with :func:`fixres.core.plots.save` in the fixres style.
matplotlib is imported when a figure is drawn, not when this module is imported.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .stats import StatsResult, StatsRow

__all__ = ["cdf_figure", "plot_cdfs", "plot_vs_resolution", "vs_resolution_figure"]


def _series(result: StatsResult) -> dict[tuple[str, str], list[StatsRow]]:
    """(label, features) -> test rows by resolution; equalised replaces pooled in the figures
    (it is what that classifier receives; its pooled features are the source's)."""
    out: dict = {}
    for r in result.rows[1:]:
        out.setdefault((r.label, r.features), []).append(r)
    for label, features in list(out):
        if features == "equalised":
            out.pop((label, "pooled"), None)
    return out


def _name(label: str, features: str) -> str:
    return label + (" (equalised)" if features == "equalised" else "")


def plot_cdfs(result: StatsResult, path: str | Path) -> Path:
    """Write :func:`cdf_figure` to ``path``."""
    from ..core.plots import save
    return save(cdf_figure(result), path)


def plot_vs_resolution(result: StatsResult, path: str | Path) -> Path:
    """Write :func:`vs_resolution_figure` to ``path``."""
    from ..core.plots import save
    return save(vs_resolution_figure(result), path)


def cdf_figure(result: StatsResult):
    """One panel per checkpoint: the CDF of all pooled values per test resolution (symlog x,
    so the zero mass is the curve's height at x = 0), the train-time reference dashed black;
    an adapted checkpoint's curve at its adapted resolution is drawn thicker."""
    from matplotlib import colormaps

    from ..core.plots import new_figures, styled
    series, ref = _series(result), result.rows[0]
    ref_values = result.values[(ref.label, "pooled", "train", ref.resolution)]
    positive = ref_values[ref_values > 0]
    linthresh = 10.0 ** np.floor(np.log10(np.quantile(positive, 0.05))) if positive.size else 1e-3
    top = max(float(v[-1]) for v in result.values.values())
    ticks = [0.0] + [10.0 ** e for e in range(int(np.log10(linthresh)), int(np.ceil(np.log10(max(top, 1e-9)))) + 1)]
    u = np.linspace(0, 1, 801)
    resolutions = sorted({r.resolution for rows in series.values() for r in rows})
    colour = {k: colormaps["viridis"](0.9 * i / max(1, len(resolutions) - 1)) for i, k in enumerate(resolutions)}
    with styled():
        fig, axes = new_figures(4.4 * len(series) + 0.6, 4.2, 1, len(series), sharex=True, sharey=True)
        for ax, ((label, features), rows) in zip(axes, series.items()):
            for r in rows:
                bold = r.resolution == r.adapted_res
                ax.plot(np.quantile(result.values[(label, features, "test", r.resolution)], u), u,
                        color=colour[r.resolution], linewidth=3.0 if bold else 1.4,
                        label=f"test {r.resolution}px" + (" (adapted)" if bold else ""))
            ax.plot(np.quantile(ref_values, u), u, color="black", linestyle="--", linewidth=1.8,
                    label=f"train-time (RRC {ref.resolution}px)")
            ax.set_xscale("symlog", linthresh=linthresh, linscale=0.3)
            ax.set_xticks(ticks, ["0"] + [f"{t:g}" for t in ticks[1:]])
            ax.set_xlim(0, top * 1.1)
            ax.set_title(_name(label, features) + (f", adapted at {rows[0].adapted_res}px" if rows[0].adapted_res
                                                   else ""))
            ax.set_xlabel(f"feature value (symlog: linear below {linthresh:g})")
            ax.legend(loc="lower right", frameon=False, fontsize=7)
        axes[0].set_ylabel("fraction of values <= x   (height at 0 = zeros)")
        fig.suptitle(f"{ref.model}: CDF of the pooled features (the classifier's input), {ref.n} {ref.split} images")
        return fig


def vs_resolution_figure(result: StatsResult):
    """Zero fraction, mean, W1 and channel shift against test resolution, one line per checkpoint."""
    from ..core.plots import PALETTE, new_figures, styled, vertical_marker
    ref, series = result.rows[0], _series(result)
    panels = [("zeros", "fraction of values exactly 0", True), ("mean", "mean value", True),
              ("w1", "W1 distance to the train-time values", False),
              ("channel_shift", "channel shift (in train-time channel stds)", False)]
    adapted = sorted({rows[0].adapted_res for rows in series.values() if rows[0].adapted_res})
    with styled():
        fig, axes = new_figures(9.0, 6.8, 2, 2, sharex=True)
        for ax, (key, title, has_ref) in zip(axes, panels):
            for i, ((label, features), rows) in enumerate(series.items()):
                ax.plot([r.resolution for r in rows], [getattr(r, key) for r in rows], marker="o",
                        color=PALETTE[i % len(PALETTE)], label=_name(label, features))
            if has_ref:
                ax.axhline(getattr(ref, key), color="black", linestyle="-.", linewidth=1.2,
                           label=f"train-time (RRC {ref.resolution}px)")
            vertical_marker(ax, ref.resolution, "train", f"train {ref.resolution}px")
            for k in adapted:
                ax.axvline(k, color="#ff7f0e", linestyle=":", linewidth=1.4, label=f"adapted at {k}px")
            ax.set_title(title)
        for ax in axes[2:]:
            ax.set_xlabel("test resolution (px)")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), frameon=False)
        fig.suptitle(f"{ref.model}: pooled features against test resolution ({ref.n} {ref.split} images)")
        return fig
