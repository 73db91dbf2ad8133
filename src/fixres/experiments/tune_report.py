"""The report of ``fixres tune``: the model's curve and its ladder's, and per budget the rung to
deploy. Read from the summary ``tune.json`` holds; nothing is measured here."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..core.plots import plot_costs, plot_sweep
from ..core.rundir import write_text
from ..core.tables import pct, table
from .report import evidence, html_page

LABELS = {"fixres": "FixRes ladder (classifier + last norm)", "bn": "BN statistics ladder (label-free)",
          "parametric": "parametric ladder (label-free)", "head": "classifier-only ladder"}


def ladder_rows(record: dict) -> list[dict]:
    """A ladder's rungs as sweep rows (val after adaptation, with each rung's cost)."""
    return [{"test_res": r["test_res"], "crop_pct": r["crop_pct"], "split": "val", "top1": r["after"]["top1"],
             "gflops": r.get("gflops"), "latency_ms": r.get("latency_ms")} for r in record["rungs"]]


def tune_rows(summary: dict) -> list[dict]:
    """One row per swept resolution: the unadapted model on val and on the selection images, each
    ladder's rung there."""
    sweep = summary["sweep"]
    held = {r["test_res"]: r["top1"] for r in sweep.get("selection_rows", [])}
    ladders = {m: {r["test_res"]: r["after"]["top1"] for r in rec["rungs"]} for m, rec in summary["ladders"].items()}
    corrupted = corrupted_means(summary)
    rows = []
    for r in sweep["rows"]:
        k = r["test_res"]
        rows.append({"test_res": k, "gflops": r.get("gflops"), "ms": r.get("latency_ms"), "val": r["top1"],
                     "held_out": held.get(k), **{m: ladders[m].get(k) for m in ladders},
                     **{c: per.get(k) for c, per in corrupted.items()}})
    known = {r["test_res"] for r in rows}
    for k in sorted({k for per in ladders.values() for k in per} - known):   # a rung above the swept range
        rows.append({"test_res": k, "val": None, **{m: ladders[m].get(k) for m in ladders}})
    return sorted(rows, key=lambda r: r["test_res"])


def corrupted_means(summary: dict) -> dict[str, dict[int, float]]:
    """The robustness columns (``TuneOptions.corrupt``): mean val top-1 under the corruptions of
    the unadapted model and of the ladder, at each rung; empty when none was measured."""
    checkpoints = summary.get("ladder_sweep", {}).get("checkpoints", [])
    if not checkpoints or not checkpoints[0].get("corrupted_mean_rows"):
        return {}
    names = ("corrupted", f"{summary['options']['method']} corrupted")
    return {name: {r["test_res"]: r["top1"] for r in c["corrupted_mean_rows"]} for name, c in zip(names, checkpoints)}


def tune_table(summary: dict) -> str:
    sweep, rungs = summary["sweep"], set(summary["rungs"]["test_res"])
    chosen = (sweep.get("chosen") or {}).get("test_res")
    rows = tune_rows(summary)
    for r in rows:
        notes = [n for n, on in (("train", r["test_res"] == sweep["train_res"]), ("rung", r["test_res"] in rungs),
                                 (f"best on {(sweep.get('chosen') or {}).get('split')}", r["test_res"] == chosen)) if on]
        r["note"] = ", ".join(notes)
    columns = [("test_res", "test res", "d"), ("gflops", "GFLOPs", ".3g"), ("ms", "ms", ".3g"),
               ("val", "no adapt", ".2f"), ("held_out", f"({sweep['selection']['split']})", ".2f")]
    columns += [(m, {"fixres": "FixRes", "bn": "BN stats"}.get(m, m), ".2f") for m in summary["ladders"]]
    columns += [(c, c.replace("fixres", "FixRes"), ".2f") for c in corrupted_means(summary)]
    columns.append(("note", "", "s"))
    return table(rows, columns)


def budget_sentences(summary: dict) -> list[str]:
    """``for a budget of X ms deploy rung R: Y% of the best accuracy`` (on the images the rungs were
    compared on), for the budget asked first."""
    lines = []
    for c in summary["deployments"]:
        unit = c["unit"]
        if c["rung"] is None:
            lines.append(f"for a budget of {c['budget']:.3g} {unit}: {c['note']}")
            continue
        on = {"holdout": "the held-out training images", "val": "val"}.get(c["split"], c["split"])
        lines.append(f"for a budget of {c['budget']:.3g} {unit} deploy rung {c['rung']}px: "
                     f"{100 * c['of_best']:.1f}% of the best accuracy on {on} (the best rung: {c['best']}px); val "
                     f"top-1 {c['val_top1']:.2f}" + (" <- the budget asked" if c["asked"] else ""))
    return lines


def story_lines(summary: dict) -> list[str]:
    sweep, ladder = summary["sweep"], summary["ladders"][summary["options"]["method"]]
    val = {r["test_res"]: r["top1"] for r in sweep["rows"]}
    chosen = sweep.get("chosen") or {}
    train_res = sweep["train_res"]
    declared = sweep["train_res_from"] != "the checkpoint (fixres train)"
    train = summary.get("train")
    if train:   # the demo trained it
        lines = [f"Trained {train['model']} at {train['train_res']}px ({train['train_seconds']:.0f}s, "
                 f"{train['train_images_per_s']:.0f} img/s on {train['device']})."]
    else:
        lines = [f"{sweep['model']}: " + (f"train resolution {train_res}px, from {sweep['train_res_from']} (the weights "
                                          "do not record it)." if declared else f"trained at {train_res}px.")]
    if chosen:
        at_train = val.get(train_res)
        gain = "" if at_train is None else f" ({chosen['report_top1'] - at_train:+.1f} against {train_res}px)"
        lines.append(f"Without adaptation the best test resolution is {chosen['test_res']}px, chosen on the "
                     f"{chosen['split']} images (never on val): val top-1 {chosen['report_top1']:.1f}%{gain}.")
    predicted = summary["prediction"]
    lines.append(f"The geometric prediction from the crop geometry (apparent object size) is {predicted['test_res']}px: "
                 "it accounts for RandomResizedCrop's zoom only.")
    best = max(ladder["rungs"], key=lambda r: r["after"]["top1"])
    lines.append(f"The ladder ({ladder['method']}, rungs {', '.join(str(r['test_res']) for r in ladder['rungs'])} px: "
                 f"{summary['rungs']['why']}): best val top-1 {best['after']['top1']:.1f}% at {best['test_res']}px "
                 f"(before adapting {best['before']['top1']:.1f}%); every rung adds "
                 f"{sum(r['bytes'] for r in ladder['rungs']) / len(ladder['rungs']) / 1024:.1f} KiB to the "
                 f"{ladder['base_bytes'] / 2**20:.1f} MiB base.")
    lines += robustness_lines(summary, best["test_res"])
    lines += [s[0].upper() + s[1:] + "." for s in budget_sentences(summary)[:3]]
    return lines


def robustness_lines(summary: dict, rung: int) -> list[str]:
    """What the corruptions did at the best rung, unadapted and adapted (when measured)."""
    corrupted = corrupted_means(summary)
    if not corrupted:
        return []
    labels = list(dict.fromkeys(r["corruption"] for r in summary["ladder_sweep"]["checkpoints"][0]["corrupted_rows"]))
    (plain, before), (adapted, after) = ((name, per.get(rung)) for name, per in corrupted.items())
    if before is None or after is None:
        return []
    method = summary["options"]["method"]
    clean = {r["test_res"]: r["top1"] for r in summary["ladder_sweep"]["checkpoints"][0]["rows"]}
    return [f"Under corruption ({', '.join(labels)}: ImageNet-C's functions on the decoded image), mean val top-1 at "
            f"{rung}px: {before:.1f}% unadapted (clean {clean.get(rung, float('nan')):.1f}%), {after:.1f}% after the "
            f"{method} adaptation ({after - before:+.1f})."]


def tune_text(summary: dict) -> str:
    """The story, the table and where the report is, for the terminal."""
    t = summary["timings"]
    return "\n".join(["", *(f"- {line}" for line in story_lines(summary)),
                      f"\nval top-1 at each test resolution (({summary['sweep']['selection']['split']}): the training "
                      "images that chose the resolution):\n", tune_table(summary),
                      "\ntimings (s): " + ", ".join(f"{k} {v}" for k, v in t.items()) + f"; total {sum(t.values()):.0f}",
                      f"report: {summary['report']['html']} (and report.md, PNGs)"])


def write_tune_report(out: Path, summary: dict) -> dict[str, Path]:
    """accuracy.png, cost.png, report.md and report.html in ``out``."""
    sweep = summary["sweep"]
    ladders = {LABELS.get(m, m): ladder_rows(rec) for m, rec in summary["ladders"].items()}
    curves = {"no adaptation": sweep["rows"] + sweep.get("selection_rows", []), **ladders}
    for (name, _), checkpoint in zip(corrupted_means(summary).items(), summary.get("ladder_sweep", {}).get(
            "checkpoints", [])):
        curves[f"{name.replace('fixres', 'FixRes ladder')} (mean)"] = checkpoint["corrupted_mean_rows"]
    chosen = sweep.get("chosen") or {}
    plot_sweep(curves, out / "accuracy.png", train_res=sweep["train_res"],
               predicted=summary["prediction"]["test_res"], chosen=chosen.get("test_res"),
               title="Top-1 against test resolution: the model and its ladder")
    best = {"no adaptation": (chosen["test_res"], chosen["crop_pct"])} if chosen else {}
    plot_costs({"no adaptation": sweep["rows"], **ladders}, out / "cost.png", train_res=sweep["train_res"],
               best=best, title="Val top-1 against cost: the model and its ladder's rungs")
    figures = [("accuracy.png", "Top-1 against test resolution"),
               ("apparent_size.png", "Apparent object size, train vs test (the geometric prediction)"),
               ("cost.png", "Top-1 against cost: FLOPs and measured latency, the Pareto front")]
    story = story_lines(summary)
    ladder = summary["ladders"][summary["options"]["method"]]
    rung_table = table([{"test_res": r["test_res"], "before": r["before"]["top1"], "after": r["after"]["top1"],
                         "top5": pct(r["after"]["top5"]), "selection": r["selection_top1"], "gflops": r["gflops"],
                         "ms": r.get("latency_ms"), "kib": r["bytes"] / 1024} for r in ladder["rungs"]],
                       [("test_res", "rung", "d"), ("before", "val before", ".2f"), ("after", "val after", ".2f"),
                        ("top5", "top-5", "s"), ("selection", f"({ladder['selection']['split']})", ".2f"),
                        ("gflops", "GFLOPs", ".3g"), ("ms", "ms", ".3g"), ("kib", "KiB", ".1f")])
    facts = {"data": summary["data"], "model": summary["source"], **evidence(summary), "timing": ladder.get("timing")}
    budgets = budget_sentences(summary)
    md = ["# fixres tune", "", *[f"- {line}" for line in story], "",
          "## Accuracy against test resolution", "", "![accuracy](accuracy.png)", "", "```", tune_table(summary), "```",
          "", "## Apparent object size", "", "![apparent size](apparent_size.png)", "",
          "## Accuracy against cost", "", *[f"- {b}" for b in budgets], "", "![cost](cost.png)", "",
          "## The ladder", "", "```", rung_table, "```", "", "## Evidence", "",
          *[f"- {k}: {v}" for k, v in facts.items()], ""]
    write_text(out / "report.md", "\n".join(md))
    write_text(out / "report.html", html_page(story, figures, out, tune_table(summary), rung_table, facts,
                                              "\n".join(budgets), title=f"fixres tune: {sweep['model']}",
                                              cost_heading="The ladder"))
    return {"html": out / "report.html", "markdown": out / "report.md", "plot": out / "accuracy.png",
            "cost_plot": out / "cost.png"}


def copy_figure(src: Path, out: Path) -> None:
    """A figure another report drew (the apparent-size histogram), beside this one."""
    if src.is_file() and src.resolve() != out.resolve():
        shutil.copyfile(src, out)


__all__ = ["budget_sentences", "copy_figure", "corrupted_means", "robustness_lines", "ladder_rows", "story_lines", "tune_rows", "tune_table", "tune_text",
           "write_tune_report"]
