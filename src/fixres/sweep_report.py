"""Reporting of a :class:`~fixres.sweep.SweepResult`: text table, JSON record and output files.

Pure formatting and writing; nothing here measures (:mod:`fixres.sweep` does).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from .checkpoint import versions
from .data.transforms import EvalTransform
from .rundir import prepare_output_files, write_json, write_text
from .sweep import SweepResult
from .tables import table

__all__ = ["SWEEP_FILES", "sweep_json", "sweep_table", "write_sweep"]

SWEEP_FILES = ("sweep.csv", "sweep.json", "sweep.png")

_COLUMNS = [("test_res", "test_res", "d"), ("crop_pct", "crop_pct", "g"), ("resize_size", "resize", "d"),
            ("top1", "top-1", ".2f"), ("top5", "top-5", ".2f"), ("loss", "loss", ".4f"), ("n", "images", "d"),
            ("mark", "", "s")]


def sweep_json(result: SweepResult) -> dict:
    """Everything the sweep measured and what produced it (the rows carry their own provenance)."""
    sel = result.selection
    chosen = None if result.best is None else {
        "test_res": result.best[0], "crop_pct": result.best[1], "split": result.chosen_on,
        "resize_size": EvalTransform(*result.best).resize_size,
        "report_top1": getattr(result.best_row(), "top1", None)}
    return {"checkpoint": result.rows[0].checkpoint, "model": result.rows[0].model, "train_res": result.train_res,
            "report_split": result.rows[0].split, "chosen": chosen,
            "selection": {"split": sel.split, "images": len(sel.index) if sel.index is not None else None,
                          "seen_in_training": sel.seen_in_training, "note": sel.note},
            "predicted": result.predicted, "device": result.device, "versions": versions(),
            "rows": [r.row() for r in result.rows],
            "selection_rows": [] if result.selected_on_report else [r.row() for r in result.selection_rows],
            "skipped_files": [{"path": p, "reason": why} for p, why in result.skipped]}


def sweep_table(result: SweepResult) -> str:
    """A plain-text report: one table per split, the train resolution and the chosen best marked."""
    first = result.rows[0]
    lines = [f"{first.model} trained at {first.train_res}px ({first.interpolation}"
             + (f", adapted: {first.adapted}" if first.adapted else "") + f"): {first.checkpoint}"]
    splits = ([result.rows] if result.selected_on_report or not result.selection_rows
              else [result.selection_rows, result.rows])
    for rows in splits:
        shown = [{**r.row(), "mark": " ".join(m for m, on in (
            ("train", r.test_res == r.train_res),
            ("<- best", (r.test_res, r.crop_pct) == result.best)) if on)} for r in rows]
        lines += ["", f"{rows[0].split} ({rows[0].n} images" + (f", {rows[0].n_skipped} unreadable" if rows[0].n_skipped else "")
                  + ")", table(shown, _COLUMNS)]
    lines.append("")
    if result.best is None:
        lines.append("best resolution: not chosen (--select-on none)")
    else:
        at = result.best_row()
        train = [r for r in result.rows if r.test_res == r.train_res and r.crop_pct == result.best[1]]
        gain = f" ({at.top1 - train[0].top1:+.2f} vs the train resolution)" if train else ""
        lines.append(f"best on {result.chosen_on}: {result.best[0]}px, crop_pct {result.best[1]:g}; "
                     f"{at.split} top-1 there {at.top1:.2f}{gain}")
        lines.append(f"  {result.selection.note}")
    pred = result.predicted
    lines.append(f"predicted: {pred['test_res']}px (geometric: apparent object size, {pred['statistic']}, "
                 f"{pred['sizes']}; not measured)" if pred.get("test_res") is not None else pred["note"])
    return "\n".join(lines)


def write_sweep(result: SweepResult, out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write ``sweep.csv``, ``sweep.json`` and ``sweep.png`` into ``out_dir`` (refusing to replace them)."""
    from .plots import plot_sweep     # matplotlib is imported when a figure is drawn, not at start-up
    out = prepare_output_files(out_dir, SWEEP_FILES, overwrite=overwrite)
    rows = [*(() if result.selected_on_report else result.selection_rows), *result.rows]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].row()), lineterminator="\n")
    writer.writeheader()
    writer.writerows(r.row() for r in rows)
    write_text(out / "sweep.csv", buf.getvalue())
    write_json(out / "sweep.json", sweep_json(result))
    plot_sweep({"": rows}, out / "sweep.png", train_res=result.train_res, chosen=result.best,
               predicted=result.predicted.get("test_res"), title=f"{result.rows[0].model}: top-1 against test resolution")
    return [out / name for name in SWEEP_FILES]
