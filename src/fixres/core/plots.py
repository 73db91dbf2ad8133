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

from .pareto import pareto_front
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
    fig, axes = new_figures(width, height, 1, 1)
    return fig, axes[0]


def new_figures(width: float, height: float, rows: int, cols: int, **kwargs) -> tuple[Figure, Any]:
    """A figure with a ``rows`` x ``cols`` grid of axes (returned flat, row by row; ``kwargs``
    go to ``Figure.subplots``, e.g. ``sharex``), attached to an Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False, **kwargs).ravel()


def metric_label(metric: str) -> str:
    """The y-axis label of an accuracy metric."""
    return {"top1": "top-1 accuracy (%)", "top5": "top-5 accuracy (%)"}.get(metric, metric)


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
        ax.set_ylabel(metric_label(metric))
        if title:
            ax.set_title(title)
        if len(ax.get_legend_handles_labels()[1]) > 6:   # many curves: beside the axes, off the data
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
            fig.set_size_inches(fig.get_figwidth() + 3.0, fig.get_figheight())
        else:
            ax.legend(loc="best", frameon=False)
        return fig


# Point markers of the cost figure: (matplotlib marker, size, face colour) per meaning.
POINTS = {"train": ("s", 9, "none"), "best": ("*", 14, MARKERS["chosen"][0]), "deploy": ("D", 8, "#2ca02c"),
          "deploy2": ("P", 10, "#ff7f0e")}
COST_AXES = {"gflops": "GFLOPs per image (1 multiply-add = 2 FLOPs)", "latency_ms": "measured latency, one image (ms)"}


def plot_costs(curves: Mapping[str, Sequence], path: str | Path, **kw) -> Path:
    """Write :func:`cost_figure` to ``path``."""
    return save(cost_figure(curves, **kw), path)


def cost_figure(curves: Mapping[str, Sequence], *, train_res: int | None = None,
                best: Mapping[str, tuple] | None = None, deploy: Mapping[str, Sequence[tuple]] | None = None,
                title: str | None = None, metric: str = "top1") -> Figure:
    """Top-1 against cost, one point per geometry: FLOPs in the first panel, measured latency
    in the second (left out when the rows were not timed), the Pareto front of all the points
    drawn in each, the train resolution, the best and the deployment choices marked.

    Args:
        curves: label -> sweep rows (``SweepRow`` or dicts with test_res, crop_pct, ``metric``,
            gflops and latency_ms); e.g. ``{"not adapted": rows0, "fixres at 96px": rows1}``.
            A label "" is a single, unnamed curve (named by its split).
        train_res: the training resolution (an open square on the first curve's point there).
        best: label -> ``(test_res, crop_pct)`` of that curve's best (a star).
        deploy: label -> ``(test_res, crop_pct, rule)`` deployment choices (diamonds).
        title: figure title.
        metric: the row field on the y axis.
    """
    rows = {label: [_as_dict(r) for r in rs] for label, rs in curves.items()}
    if not any(rows.values()):
        raise ValueError("cost_figure: no rows to plot")
    panels = [k for k in COST_AXES if all(r.get(k) is not None for rs in rows.values() for r in rs)]
    if "gflops" not in panels:
        raise ValueError("cost_figure: rows without gflops")
    pcts = sorted({float(r["crop_pct"]) for rs in rows.values() for r in rs}, reverse=True)
    with styled():
        fig, axes = new_figures(5.2 * len(panels), 4.6, 1, len(panels))
        for ax, cost in zip(axes, panels):
            _cost_panel(ax, rows, cost, pcts, metric, train_res, best or {}, deploy or {})
            ax.set_xlabel(COST_AXES[cost])
            ax.set_ylabel(metric_label(metric))
        # One legend for the panels (they draw the same series), below them.
        fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="outside lower center", frameon=False,
                   ncols=len(panels))
        if title:
            fig.suptitle(title)
        return fig


def _cost_panel(ax, rows: dict[str, list[dict]], cost: str, pcts: list[float], metric: str, train_res,
                best: Mapping[str, tuple], deploy: Mapping[str, Sequence[tuple]]) -> None:
    named = [label for label in rows if label]

    def suffix(label: str) -> str:
        return f" ({label})" if label and len(named) > 1 else ""

    everything = []
    for c, (label, rs) in enumerate(rows.items()):
        colour = PALETTE[c % len(PALETTE)]
        for pct in pcts:
            points = sorted((r[cost], r[metric], r["test_res"]) for r in rs if float(r["crop_pct"]) == pct)
            if not points:
                continue
            name = ", ".join(x for x in (label or rs[0]["split"], f"crop {pct:g}" if len(pcts) > 1 else "") if x)
            ax.plot([x for x, _, _ in points], [y for _, y, _ in points], marker="o", color=colour,
                    linestyle=LINESTYLES[pcts.index(pct) % len(LINESTYLES)], label=name, zorder=2)
            for x, y, res in points:
                ax.annotate(f"{res}", (x, y), textcoords="offset points", xytext=(3, -9), fontsize=6, color=colour)
            everything += [(x, y) for x, y, _ in points]
        at = {(r["test_res"], float(r["crop_pct"])): r for r in rs}

        def mark(kind: str, keys, text: str, colour: str = colour) -> None:
            hits = [at[k] for k in keys if k in at]
            if hits:     # the edge in the curve's colour tells whose point it is
                shape, size, face = POINTS[kind]
                ax.plot([h[cost] for h in hits], [h[metric] for h in hits], marker=shape, markersize=size,
                        markerfacecolor=face, markeredgecolor=colour if len(named) > 1 else "#111111",
                        markeredgewidth=1.5, linestyle="none", label=text, zorder=4)

        if train_res is not None and c == 0:      # once: the first curve is the reference (e.g. not adapted)
            mark("train", [(train_res, pct) for pct in pcts], f"train {train_res}px")
        if label in best and best[label] is not None:
            mark("best", [tuple(best[label][:2])], f"best {best[label][0]}px{suffix(label)}")
        for i, d in enumerate(deploy.get(label, ())):
            mark("deploy2" if i % 2 else "deploy", [(d[0], float(d[1]))], f"deploy {d[0]}px: {d[2]}{suffix(label)}")
    front = [everything[i] for i in pareto_front(everything)]
    ax.plot([x for x, _ in front], [y for _, y in front], color="#999999", linewidth=4, alpha=0.35,
            drawstyle="steps-post", label="Pareto front", zorder=1)
