"""Reports: the demo's story as a terminal table, a Markdown page and a self-contained HTML page.

Everything shown is read from the summary the demo wrote (``demo.json``); nothing is
recomputed here. Figures are PNGs beside the pages (and embedded in the HTML).
"""
from __future__ import annotations

import base64
import html
import platform
import subprocess
from pathlib import Path

from ..core.plots import plot_costs, plot_sweep
from ..core.rundir import write_text
from ..core.tables import table
from ..measure.sweep_report import deployment_sentence

METHOD_LABELS = {"fixres": "FixRes adaptation (classifier + last BN)", "bn": "BN statistics only (label-free)"}


def demo_rows(summary: dict) -> list[dict]:
    """One row per test resolution: accuracy before and after each adaptation."""
    sweep = summary["sweep"]
    held = {r["test_res"]: r["top1"] for r in sweep.get("selection_rows", [])}
    adapted = {m: {r["test_res"]: r["top1"] for r in rows} for m, rows in summary["adapted"].items()}
    rows = []
    for r in sweep["rows"]:
        k = r["test_res"]
        rows.append({"test_res": k, "gflops": r.get("gflops"), "ms": r.get("latency_ms"), "val": r["top1"],
                     "held_out": held.get(k), **{m: adapted[m].get(k) for m in adapted}})
    return rows


def deploy_choice(summary: dict) -> dict | None:
    """The sweep's first deployment choice (``DemoConfig.deploy_within``), if any."""
    return next(iter(summary["sweep"].get("deployments") or ()), None)


def headline(summary: dict) -> dict:
    cfg, sweep = summary["config"], summary["sweep"]
    val = {r["test_res"]: r["top1"] for r in sweep["rows"]}
    chosen = sweep["chosen"]["test_res"] if sweep.get("chosen") else None
    best_fixres = max(summary["adapted"].get("fixres", []), key=lambda r: r["top1"], default=None)
    return {"train_res": cfg["train_res"], "predicted": summary["prediction"]["test_res"], "chosen": chosen,
            "chosen_on": sweep.get("chosen", {}).get("split"), "at_train": val.get(cfg["train_res"]),
            "at_chosen": val.get(chosen), "fixres_res": best_fixres and best_fixres["test_res"],
            "fixres_top1": best_fixres and best_fixres["top1"],
            "fixres_at_chosen": next((r["top1"] for r in summary["adapted"].get("fixres", [])
                                      if r["test_res"] == chosen), None)}


def demo_table(summary: dict) -> str:
    h = headline(summary)
    rows = demo_rows(summary)
    deploy = deploy_choice(summary)
    for r in rows:
        notes = []
        if r["test_res"] == h["train_res"]:
            notes.append("train")
        if r["test_res"] == h["chosen"]:
            notes.append(f"chosen on {h['chosen_on']}")
        if deploy and r["test_res"] == deploy["test_res"]:
            notes.append("deploy")
        r["note"] = ", ".join(notes)
    columns = [("test_res", "test res", "d"), ("gflops", "GFLOPs", ".3g"), ("ms", "ms", ".3g"),
               ("val", "no adapt", ".2f"), ("held_out", "(held-out)", ".2f")]
    columns += [(m, {"fixres": "FixRes", "bn": "BN stats"}.get(m, m), ".2f") for m in summary["adapted"]]
    columns.append(("note", "", "s"))
    return table(rows, columns)


def story_lines(summary: dict) -> list[str]:
    h, train = headline(summary), summary["train"]
    lines = [f"Trained {summary['config']['model']} at {h['train_res']}px "
             f"({train['train_seconds']:.0f}s, {train['train_images_per_s']:.0f} img/s on {train['device']})."]
    if h["at_train"] is not None and h["at_chosen"] is not None:
        lines.append(f"Tested at the training resolution: {h['at_train']:.1f}% top-1 on val. "
                     f"Tested at {h['chosen']}px, the resolution chosen on the {h['chosen_on']} images "
                     f"(never on val): {h['at_chosen']:.1f}% (+{h['at_chosen'] - h['at_train']:.1f}).")
    lines.append(f"The geometric prediction from the augmentation (apparent object size) was "
                 f"{h['predicted']}px: it accounts for RandomResizedCrop's zoom only; the measured optimum is "
                 "higher when more pixels also resolve more detail, as on this dataset.")
    if h["fixres_top1"] is not None:
        at = (f"; at {h['chosen']}px {h['fixres_at_chosen']:.1f}%" if h["fixres_at_chosen"] is not None else "")
        lines.append(f"After the FixRes adaptation (classifier + last batch-norm at the test resolution, on "
                     f"{summary['config']['adapt_images']} training images): best {h['fixres_top1']:.1f}% at "
                     f"{h['fixres_res']}px{at}.")
    deploy = deploy_choice(summary)
    if deploy is not None:
        lines.append(f"To deploy (the smallest resolution {deploy['rule']}, {deploy['best_test_res']}px, on the "
                     f"{deploy['chosen_on']} images; no adaptation): {deployment_sentence(deploy)}.")
    return lines


def _cost_curves(summary: dict) -> dict[str, list[dict]]:
    """The sweep's val rows, and each adaptation's rows with the cost of the same resolution
    (same architecture: the adaptation changes weights, not the computation)."""
    sweep = summary["sweep"]
    cost = {r["test_res"]: r for r in sweep["rows"]}
    curves = {"no adaptation": sweep["rows"]}
    for method, rows in summary["adapted"].items():
        curves[METHOD_LABELS.get(method, method)] = [
            {**r, "gflops": cost[r["test_res"]].get("gflops"), "latency_ms": cost[r["test_res"]].get("latency_ms")}
            for r in rows if r["test_res"] in cost]
    return curves


def _evidence(summary: dict) -> dict:
    train = summary["train"]
    return {"seed": summary["config"]["seed"], "device": train["device"], "platform": platform.platform(),
            **train.get("versions", {}), "git": _git_revision(), "timings (s)": summary["timings"]}


def _git_revision() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_demo_report(out: Path, summary: dict) -> dict[str, Path]:
    """Write accuracy.png, cost.png, report.md and report.html into ``out``; return their paths."""
    out = Path(out)
    h = headline(summary)
    sweep = summary["sweep"]
    curves = {"no adaptation": sweep["rows"] + sweep.get("selection_rows", [])}
    for method, rows in summary["adapted"].items():
        curves[METHOD_LABELS.get(method, method)] = rows
    plot = plot_sweep(curves, out / "accuracy.png", train_res=h["train_res"], predicted=h["predicted"],
                      chosen=h["chosen"], title="Top-1 against test resolution, before and after adaptation")
    deploy = deploy_choice(summary)
    chosen = {"no adaptation": (sweep["chosen"]["test_res"], sweep["chosen"]["crop_pct"])} if sweep.get("chosen") else {}
    plot_costs(_cost_curves(summary), out / "cost.png", train_res=h["train_res"], best=chosen,
               deploy={"no adaptation": [(deploy["test_res"], deploy["crop_pct"], deploy["rule"])]} if deploy else {},
               title="Val top-1 against cost (best and deploy chosen on the held-out images)")
    figures = [("accuracy.png", "Top-1 against test resolution"),
               ("apparent_size.png", "Apparent object size, train vs test (the geometric prediction)"),
               ("cost.png", "Top-1 against cost: FLOPs and measured latency per resolution, the Pareto front")]
    story, evidence = story_lines(summary), _evidence(summary)
    cost = [{"train_res": summary["train"]["train_res"], "epochs": summary["train"]["epochs"],
             "seconds": summary["train"]["train_seconds"], "img/s": summary["train"]["train_images_per_s"],
             "peak MB": summary["train"]["peak_memory_mb"], "device": summary["train"]["device"]}]
    cost_table = table(cost, [("train_res", "train res", "d"), ("epochs", "epochs", "d"), ("seconds", "seconds", ".0f"),
                              ("img/s", "img/s", ".0f"), ("peak MB", "peak MB", ".0f"), ("device", "device", "s")])
    md = ["# FixRes on the embedded dataset", "", *[f"- {line}" for line in story], "",
          "## Accuracy against test resolution", "", "![accuracy](accuracy.png)", "", "```", demo_table(summary), "```",
          "", "## Apparent object size", "", "![apparent size](apparent_size.png)", "",
          "## Accuracy against cost", "", *([f"- {deployment_sentence(deploy)}", ""] if deploy else []),
          "![cost](cost.png)", "",
          "## Training cost", "", "```", cost_table, "```", "", "## Evidence", "",
          *[f"- {k}: {v}" for k, v in evidence.items()], ""]
    write_text(out / "report.md", "\n".join(md))
    write_text(out / "report.html", _html(story, figures, out, demo_table(summary), cost_table, evidence,
                                          deployment_sentence(deploy) if deploy else ""))
    return {"html": out / "report.html", "markdown": out / "report.md", "plot": plot, "cost_plot": out / "cost.png"}


def _html(story, figures, out: Path, accuracy_table: str, cost_table: str, evidence: dict, deploy: str) -> str:
    def img(name, caption):
        path = out / name
        if not path.is_file():
            return ""
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}"><figcaption>' \
               f'{html.escape(caption)}</figcaption></figure>'

    items = "".join(f"<li>{html.escape(s)}</li>" for s in story)
    ev = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in evidence.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fixres demo report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 920px; margin: 2em auto; padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }}
ul.story li {{ margin: .4em 0; line-height: 1.4; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }} figcaption {{ color: #666; font-size: .9em; }}
pre {{ background: #f6f6f6; padding: .8em; overflow-x: auto; }}
table.evidence th {{ text-align: left; padding-right: 1em; color: #555; font-weight: normal; }}
</style></head><body>
<h1>FixRes on the embedded dataset</h1>
<ul class="story">{items}</ul>
<h2>Accuracy against test resolution</h2>
{img(*figures[0])}
<pre>{html.escape(accuracy_table)}</pre>
<h2>Apparent object size</h2>
{img(*figures[1])}
<h2>Accuracy against cost</h2>
{f"<p>{html.escape(deploy)}</p>" if deploy else ""}
{img(*figures[2])}
<h2>Training cost</h2>
<pre>{html.escape(cost_table)}</pre>
<h2>Evidence</h2>
<table class="evidence">{ev}</table>
</body></html>
"""


def demo_text(summary: dict) -> str:
    """What ``fixres demo`` prints at the end: the story, the table, the timings, the report."""
    t = summary["timings"]
    return "\n".join(["", *(f"- {line}" for line in story_lines(summary)),
                      "\nval top-1 at each test resolution (held-out: the training images that chose the "
                      "resolution):\n", demo_table(summary),
                      "\ntimings (s): " + ", ".join(f"{k} {v}" for k, v in t.items()) + f"; total {sum(t.values()):.0f}",
                      f"report: {summary['report']['html']} (and report.md, PNGs, demo.json)"])
