"""Reporting of a :class:`~fixres.measure.sweep.SweepResult` (or a :class:`~fixres.measure.sweep.SweepComparison`
of several checkpoints): text table, JSON record and output files.

Pure formatting and writing; nothing here measures (:mod:`fixres.measure.sweep` does).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..core.rundir import output_files, write_json, write_text
from ..core.tables import table
from ..data.transforms import EvalTransform
from ..models.checkpoint import versions
from .choose import unstable_timings
from .robustness import mean_over_corruptions
from .timing import STABILITY_BUDGET, STABLE_IQR
from .sweep import SweepComparison, SweepResult

__all__ = ["SWEEP_FILES", "comparison_json", "comparison_table", "deployment_sentence", "sweep_json", "sweep_table",
           "write_comparison", "write_sweep"]

SWEEP_FILES = ("sweep.csv", "sweep.json", "sweep.png", "sweep-cost.png")

_TIMING_COLUMNS = [("images_per_s", "img/s", ".0f"), ("ms", "ms", "s"), ("latency_ms_iqr", "(IQR)", ".2g")]
_ACCURACY_COLUMNS = [("test_res", "test_res", "d"), ("crop_pct", "crop_pct", "g"), ("resize_size", "resize", "d"),
                     ("top1", "top-1", ".2f"), ("top5", "top-5", ".2f"), ("loss", "loss", ".4f"), ("ece", "ECE", ".2f"),
                     ("n", "images", "d")]


def _columns(timed: bool) -> list[tuple[str, str, str]]:
    """The table's columns: the timing ones only when the sweep was timed."""
    return [*_ACCURACY_COLUMNS, ("gflops", "GFLOPs", ".3g"), *(_TIMING_COLUMNS if timed else []), ("mark", "", "s")]


def _ms(row) -> str | None:
    """A latency cell: ``~`` marks a timing that stayed unstable."""
    if row.latency_ms is None:
        return None
    return f"{row.latency_ms:.3g}" + ("~" if row.timing_stable is False else "")


def _pct(ratio: float | None) -> str:
    return "" if ratio is None else f"{100 * ratio:.0f}%"


SPLIT_NAMES = {"holdout": "the held-out training images", "train": "the training sample", "val": "val"}


def deployment_sentence(d: dict) -> str:
    """"deploy at K px: X% of the best accuracy on <images> at Y% of its cost" for a
    :class:`~fixres.measure.choose.Deployment` row (both accuracies on the images they were
    chosen on; cost in FLOPs, and in measured latency when timed, with a warning when the
    latencies it compared were not stable)."""
    on = SPLIT_NAMES.get(d.get("chosen_on"), d.get("chosen_on"))
    acc = ("" if d.get("accuracy_ratio") is None
           else f"{100 * d['accuracy_ratio']:.1f}% of the best accuracy on {on}")
    latency = "" if d.get("latency_ratio") is None else f", {_pct(d['latency_ratio'])} of its measured latency"
    unstable = d.get("unstable_timings") or ()
    warning = (f" -- timings unstable at {', '.join(map(str, unstable))}px (IQR > 25% of the median): rerun on a "
               "quiet machine or budget on GFLOPs" if unstable else "")
    return (f"deploy at {d['test_res']}px: {acc or 'accuracy not reported'} at {_pct(d['gflops_ratio'])} of its cost "
            f"({d['gflops']:.3g} vs {d['best_gflops']:.3g} GFLOPs at {d['best_test_res']}px{latency}){warning}")


def _deployment_lines(result: SweepResult) -> list[str]:
    lines = []
    for d in result.deployments:
        row = d.row()
        lines.append(f"{deployment_sentence(row)}")
        lines.append(f"  rule: {d.rule}, chosen on {d.chosen_on} ({d.chosen_on} top-1 {d.selection_top1:.2f} vs "
                     f"{d.best_selection_top1:.2f} at the best); {d.report_split} top-1 there "
                     + ("n/a" if d.top1 is None else f"{d.top1:.2f}")
                     + ("" if d.best_top1 is None else f" vs {d.best_top1:.2f}"))
    return lines


def _timing_line(result: SweepResult) -> str:
    r = result.rows[0]
    if r.latency_ms is None:
        return "timing: not measured (--no-timing); GFLOPs counted, not timed"
    line = (f"timing: {r.timing_engine}, {r.timing_device}, {r.timing_dtype}, forward pass only on synthetic input "
            "(data excluded); "
            f"img/s at batch {r.timing_batch_size}, ms for one image: medians after warm-up (IQR: spread of repeats)")
    unstable = unstable_timings(result.rows)
    if unstable:
        line += (f"\n  UNSTABLE at {', '.join(map(str, unstable))}px (marked ~: an IQR above {STABLE_IQR:.0%} of the "
                 f"median after {STABILITY_BUDGET:g}x the timing budget): the machine was busy; rerun, or budget on "
                 "GFLOPs")
    return line


def sweep_json(result: SweepResult) -> dict:
    """Everything the sweep measured and what produced it (the rows carry their own provenance)."""
    sel = result.selection
    chosen = None if result.best is None else {
        "test_res": result.best[0], "crop_pct": result.best[1], "split": result.chosen_on,
        "resize_size": EvalTransform(*result.best).resize_size,
        "report_top1": getattr(result.best_row(), "top1", None)}
    return {"checkpoint": result.rows[0].checkpoint, "model": result.rows[0].model, "train_res": result.train_res,
            "train_res_from": result.train_res_from or "the checkpoint (fixres train)",
            "report_split": result.rows[0].split, "chosen": chosen,
            "selection": {"split": sel.split, "images": len(sel.index) if sel.index is not None else None,
                          "seen_in_training": sel.seen_in_training, "note": sel.note},
            "predicted": result.predicted, "device": result.device, "versions": versions(),
            "params": result.rows[0].params, "timed": result.timed,
            "deployments": [d.row() for d in result.deployments],
            "rows": [r.row() for r in result.rows],
            "selection_rows": [] if result.selected_on_report else [r.row() for r in result.selection_rows],
            "objective": result.objective,
            "objective_choices": {k: {"test_res": v[0], "crop_pct": v[1]} for k, v in result.objective_choices.items()},
            "corrupted_rows": [r.row() for r in result.corrupted_rows],
            "corrupted_mean_rows": [r.row() for r in mean_over_corruptions(result.corrupted_rows)],
            "corrupted_selection_rows": [r.row() for r in result.corrupted_selection_rows],
            "shifted_selection_rows": [r.row() for r in result.shifted_selection_rows],
            "skipped_files": [{"path": p, "reason": why} for p, why in result.skipped]}


def robustness_table(result: SweepResult) -> str:
    """Per resolution: clean top-1 and ECE, the mean top-1 under the corruptions and each one's."""
    mean = {(r.test_res, r.crop_pct): r for r in mean_over_corruptions(result.corrupted_rows)}
    labels = list(dict.fromkeys(r.corruption for r in result.corrupted_rows))
    per = {(r.test_res, r.crop_pct, r.corruption): r.top1 for r in result.corrupted_rows}
    rows = [{"test_res": r.test_res, "crop_pct": r.crop_pct, "clean": r.top1, "ece": r.ece,
             "mean": mean[(r.test_res, r.crop_pct)].top1, "mean_ece": mean[(r.test_res, r.crop_pct)].ece,
             **{c: per[(r.test_res, r.crop_pct, c)] for c in labels}} for r in result.rows]
    columns = [("test_res", "test_res", "d"), ("crop_pct", "crop_pct", "g"), ("clean", "clean", ".2f"),
               ("ece", "ECE", ".2f"), ("mean", "corrupted", ".2f"), ("mean_ece", "ECE", ".2f"),
               *[(c, c.replace("_", " ").replace(" compression", "").replace(" transform", ""), ".1f") for c in labels]]
    return table(rows, columns)


def sweep_table(result: SweepResult) -> str:
    """A plain-text report: one table per split, the train resolution and the chosen best marked."""
    first = result.rows[0]
    params = "" if first.params is None else f", {first.params / 1e6:.3g}M parameters"
    lines = [f"{first.model} {result.trained_at} ({first.interpolation}"
             + (f", adapted: {first.adapted}" if first.adapted else "") + f"{params}): {first.checkpoint}"]
    splits = ([result.rows] if result.selected_on_report or not result.selection_rows
              else [result.selection_rows, result.rows])
    train_mark = "train (declared)" if result.train_res_from else "train"
    for rows in splits:
        shown = [{**r.row(), "ms": _ms(r), "mark": " ".join(m for m, on in (
            (train_mark, r.test_res == r.train_res),
            ("<- best", (r.test_res, r.crop_pct) == result.best),
            ("<- deploy", any((r.test_res, r.crop_pct) == (d.test_res, d.crop_pct) for d in result.deployments)))
            if on)} for r in rows]
        lines += ["", f"{rows[0].split} ({rows[0].n} images" + (f", {rows[0].n_skipped} unreadable" if rows[0].n_skipped else "")
                  + ")", table(shown, _columns(result.timed))]
    lines.append("")
    if result.best is None:
        lines.append("best resolution: not chosen (--select-on none)")
    else:
        at = result.best_row()
        train = [r for r in result.rows if r.test_res == r.train_res and r.crop_pct == result.best[1]]
        gain = f" ({at.top1 - train[0].top1:+.2f} vs the train resolution)" if train else ""
        what = "" if result.objective == "clean" else f" for the {result.objective} objective"
        lines.append(f"best on {result.chosen_on}{what}: {result.best[0]}px, crop_pct {result.best[1]:g}; "
                     f"{at.split} top-1 there {at.top1:.2f}{gain}")
        lines.append(f"  {result.selection.note}")
        if len(result.objective_choices) > 1:
            lines.append("  each objective would choose: " + ", ".join(
                f"{k} {v[0]}px" for k, v in result.objective_choices.items()))
    lines += _deployment_lines(result)
    if result.corrupted_rows:
        lines += ["", f"{result.rows[0].split} under corruption (top-1; the corruption on the decoded image, "
                      f"seeded): mean of {len(set(r.corruption for r in result.corrupted_rows))}", robustness_table(result)]
    if result.rows[0].temperature != 1.0:
        lines.append("calibrated: temperature fitted per resolution on the selection images: " + ", ".join(
            f"{r.test_res}px T={r.temperature:.3g}" for r in result.rows))
    pred = result.predicted
    lines.append(f"predicted: {pred['test_res']}px (geometric: apparent object size, {pred['statistic']}, "
                 f"{pred['sizes']}; not measured)" if pred.get("test_res") is not None else pred["note"])
    lines.append(_timing_line(result))
    return "\n".join(lines)


def _csv(rows) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].row()), lineterminator="\n")
    writer.writeheader()
    writer.writerows(r.row() for r in rows)
    return buf.getvalue()


def _marks(result: SweepResult) -> tuple[tuple | None, list[tuple]]:
    return result.best, [(d.test_res, d.crop_pct, d.rule) for d in result.deployments]


def write_sweep(result: SweepResult, out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write ``sweep.csv``, ``sweep.json``, ``sweep.png`` and ``sweep-cost.png`` as the folder
    ``out_dir``, one unit (replacing an earlier sweep there only with ``overwrite``)."""
    with output_files(out_dir, SWEEP_FILES, overwrite=overwrite) as tmp:
        _write_sweep(result, tmp)
    return [Path(out_dir) / name for name in SWEEP_FILES]


def _write_sweep(result: SweepResult, out: Path) -> None:
    from ..core.plots import plot_costs, plot_sweep  # matplotlib is imported when a figure is drawn, not at start-up
    rows = [*(() if result.selected_on_report else result.selection_rows), *result.rows]
    write_text(out / "sweep.csv", _csv([*rows, *result.corrupted_selection_rows, *result.corrupted_rows,
                                        *result.shifted_selection_rows]))
    write_json(out / "sweep.json", sweep_json(result))
    model = result.rows[0].model
    curves = {"": rows, **({"mean under corruption": mean_over_corruptions(result.corrupted_rows)}
                           if result.corrupted_rows else {})}
    plot_sweep(curves, out / "sweep.png", train_res=result.train_res, chosen=result.best,
               predicted=result.predicted.get("test_res"), title=f"{model}: top-1 against test resolution")
    best, deploy = _marks(result)
    plot_costs({"": result.rows}, out / "sweep-cost.png", train_res=result.train_res, best={"": best},
               deploy={"": deploy}, title=_cost_title(result, model))


def _cost_title(result: SweepResult, model: str) -> str:
    chosen = f"; best and deploy chosen on {result.chosen_on}" if result.chosen_on else ""
    return f"{model}: {result.rows[0].split} top-1 against cost{chosen}"


# ----------------------------------------------------------------------------- several checkpoints
def comparison_json(comp: SweepComparison) -> dict:
    """One :func:`sweep_json` per checkpoint, under its label."""
    return {"labels": list(comp.labels), "checkpoints": [{"label": label, **sweep_json(result)}
                                                         for label, result in comp.items()]}


def comparison_table(comp: SweepComparison) -> str:
    """Top-1 on the reported split at each geometry, one column per checkpoint (B: that
    checkpoint's best, D: its deployment choice), beside the geometry's cost; then each
    checkpoint's choices."""
    results = comp.results
    first = results[0]
    at = [{(r.test_res, r.crop_pct): r for r in result.rows} for result in results]
    geometries = list(dict.fromkeys(key for rows in at for key in rows))     # the first checkpoint's order first
    cost_fields = ("gflops", "latency_ms")

    def cost(r):
        return tuple(getattr(r, f) for f in cost_fields)

    shared = all(cost(rows[g]) == cost(at[0][g]) for rows in at[1:] for g in geometries if g in rows and g in at[0])
    rows, columns = [], [("test_res", "test_res", "d"), ("crop_pct", "crop_pct", "g")]
    if shared:
        columns += [("gflops", "GFLOPs", ".3g"), *([("ms", "ms", "s")] if first.timed else [])]
    for g in geometries:
        some = next(rows[g] for rows in at if g in rows)
        row = {"test_res": g[0], "crop_pct": g[1], "gflops": some.gflops, "ms": _ms(some),
               "mark": "train" if g[0] == some.train_res else ""}
        for c, result in enumerate(results):
            r = at[c].get(g)
            if r is None:
                continue
            flag = "".join(m for m, on in (("B", g == result.best),
                                          ("D", any(g == (d.test_res, d.crop_pct) for d in result.deployments))) if on)
            row[f"top1_{c}"] = f"{r.top1:.2f} {flag:<2}"
            if not shared:
                row[f"gflops_{c}"], row[f"ms_{c}"] = r.gflops, _ms(r)
        rows.append(row)
    for c, label in enumerate(comp.labels):
        columns.append((f"top1_{c}", label, "s"))
        if not shared:
            columns += [(f"gflops_{c}", "GFLOPs", ".3g"), *([(f"ms_{c}", "ms", "s")] if result.timed else [])]
    columns.append(("mark", "", "s"))
    models = "; ".join(dict.fromkeys(f"{r.rows[0].model} {r.trained_at}" for r in results))
    lines = [f"{first.rows[0].split} top-1 of {len(results)} checkpoints ({models}); B: best on its selection split, "
             "D: deployment choice", "",
             table(rows, columns), ""]
    for label, result in comp.items():
        lines.append(f"{label}: {result.rows[0].checkpoint}")
        if result.best is not None:
            at = result.best_row()
            lines.append(f"  best on {result.chosen_on}: {result.best[0]}px, crop_pct {result.best[1]:g}; "
                         f"{at.split} top-1 there {at.top1:.2f}")
        lines += [f"  {line}" for line in _deployment_lines(result)]
    lines.append(_timing_line(first) + ("" if shared else " (each checkpoint's own architecture)"))
    return "\n".join(lines)


def write_comparison(comp: SweepComparison, out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """The :data:`SWEEP_FILES` of several checkpoints: every row of every checkpoint in one CSV
    (its ``checkpoint`` column tells them apart), their curves sharing each figure; one unit,
    as :func:`write_sweep`."""
    with output_files(out_dir, SWEEP_FILES, overwrite=overwrite) as tmp:
        _write_comparison(comp, tmp)
    return [Path(out_dir) / name for name in SWEEP_FILES]


def _write_comparison(comp: SweepComparison, out: Path) -> None:
    from ..core.plots import plot_costs, plot_sweep
    rows = [r for result in comp.results
            for r in (*(() if result.selected_on_report else result.selection_rows), *result.rows)]
    write_text(out / "sweep.csv", _csv(rows))
    write_json(out / "sweep.json", comparison_json(comp))
    first = comp.results[0]
    model = first.rows[0].model
    plot_sweep({label: result.rows for label, result in comp.items()}, out / "sweep.png", train_res=first.train_res,
               predicted=first.predicted.get("test_res"),
               title=f"{model}: {first.rows[0].split} top-1 against test resolution")
    marks = {label: _marks(result) for label, result in comp.items()}
    plot_costs({label: result.rows for label, result in comp.items()}, out / "sweep-cost.png",
               train_res=first.train_res, best={k: v[0] for k, v in marks.items()},
               deploy={k: v[1] for k, v in marks.items()}, title=_cost_title(first, model))
