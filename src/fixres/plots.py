"""Figures: off-screen rendering and one style for every fixres plot.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas, never through
``pyplot``: no global backend is switched, no window opens, nothing leaks between calls,
and it works on a headless machine or inside a notebook that uses another backend.
Files are written atomically (temporary file, then rename).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .rundir import atomic_path

STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6,
    "axes.spines.top": False, "axes.spines.right": False,
    "lines.linewidth": 1.6, "lines.markersize": 4, "savefig.dpi": 150, "figure.dpi": 100,
}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
LINESTYLES = ("-", "--", ":", "-.")
# Vertical markers: colour and line style per meaning, the same in every figure.
# Marker colours stay out of PALETTE (the curves), so a marker is never mistaken for a curve.
MARKERS = {"train": ("#555555", "--"), "chosen": ("#111111", "-"), "predicted": ("#b8860b", ":")}


@contextmanager
def styled():
    """Apply the fixres style to figures created inside the block."""
    with matplotlib.rc_context(STYLE):
        yield


def new_figure(width: float = 6.4, height: float = 4.0) -> tuple[Figure, Any]:
    """A figure with one axes, attached to an Agg canvas (call inside :func:`styled`)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix) atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:      # the temporary keeps the suffix that picks the format
        fig.savefig(tmp)
    return path


def vertical_marker(ax, x: float | None, kind: str, label: str) -> None:
    """A labelled vertical line of one of the :data:`MARKERS` kinds (nothing if ``x`` is None)."""
    if x is None:
        return
    colour, style = MARKERS[kind]
    ax.axvline(x, color=colour, linestyle=style, linewidth=1.2, label=label, zorder=1)


def _as_dict(row) -> dict:
    return row.row() if hasattr(row, "row") else dict(row)


def plot_sweep(curves: Mapping[str, Sequence], path: str | Path, **kw) -> Path:
    """Write :func:`sweep_figure` to ``path`` (PNG, or any format matplotlib knows from the suffix)."""
    return save(sweep_figure(curves, **kw), path)


def sweep_figure(curves: Mapping[str, Sequence], *, train_res: int | None = None, predicted: float | None = None,
                 chosen: int | tuple | None = None, title: str | None = None, metric: str = "top1") -> Figure:
    """Top-1 (or another row field) against test resolution, one line per curve, split and crop_pct.

    Args:
        curves: label -> sweep rows (``SweepRow`` or dicts with test_res, crop_pct, split and
            ``metric``); e.g. ``{"before adaptation": rows0, "after adaptation": rows1}``.
        train_res: training resolution (grey dashed marker).
        predicted: predicted test resolution (orange dotted marker).
        chosen: chosen test resolution, or ``(test_res, crop_pct)`` (green marker).
        title: figure title.
        metric: the row field on the y axis.
    """
    lines: dict[tuple[str, str, float], list[tuple[int, float]]] = {}
    for label, rows in curves.items():
        for r in map(_as_dict, rows):
            lines.setdefault((label, r["split"], float(r["crop_pct"])), []).append((r["test_res"], r[metric]))
    if not lines:
        raise ValueError("plot_sweep: no rows to plot")
    # Name only what varies, so a single-curve legend stays short.
    varies = [len({key[i] for key in lines}) > 1 for i in range(3)]
    groups = list(dict.fromkeys(key[:2] for key in lines))
    pcts = sorted({key[2] for key in lines}, reverse=True)
    with styled():
        fig, ax = new_figure()
        for key, points in lines.items():
            points.sort()
            parts = [key[0] if varies[0] else "", key[1] if varies[1] else "",
                     f"crop {key[2]:g}" if varies[2] else ""]
            name = ", ".join(p for p in parts if p) or key[1]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                    color=PALETTE[groups.index(key[:2]) % len(PALETTE)],
                    linestyle=LINESTYLES[pcts.index(key[2]) % len(LINESTYLES)], label=name, zorder=2)
        chosen_res, chosen_pct = chosen if isinstance(chosen, tuple) else (chosen, None)
        vertical_marker(ax, train_res, "train", f"train {train_res}px")
        vertical_marker(ax, chosen_res, "chosen", f"chosen {chosen_res}px"
                        + (f" (crop {chosen_pct:g})" if varies[2] and chosen_pct is not None else ""))
        vertical_marker(ax, predicted, "predicted", f"predicted {predicted:.0f}px (geometric)"
                        if predicted is not None else "")
        ax.set_xlabel("test resolution (px)")
        ax.set_ylabel({"top1": "top-1 accuracy (%)", "top5": "top-5 accuracy (%)"}.get(metric, metric))
        if title:
            ax.set_title(title)
        ax.legend(loc="best", frameon=False)
        return fig
