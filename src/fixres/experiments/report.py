"""The self-contained HTML page of a report (figures embedded), and the evidence it names.

The reports themselves (``fixres tune``'s, which the demo's is) are :mod:`fixres.experiments.tune_report`.
"""
from __future__ import annotations

import base64
import html
import platform
import subprocess
from pathlib import Path


def evidence(summary: dict) -> dict:
    """Where a report's figures were measured: seed, device, platform, versions, revision, stage times."""
    train = summary.get("train") or {}
    return {"seed": (summary.get("options") or {}).get("seed"), "device": train.get("device"),
            "platform": platform.platform(), **train.get("versions", {}), "git": _git_revision(),
            "timings (s)": summary.get("timings")}


def _git_revision() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def html_page(story, figures, out: Path, accuracy_table: str, cost_table: str, evidence: dict, deploy: str,
              title: str = "FixRes on the embedded dataset", cost_heading: str = "Training cost") -> str:
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
<html lang="en"><head><meta charset="utf-8"><title>fixres: {html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 920px; margin: 2em auto; padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }}
ul.story li {{ margin: .4em 0; line-height: 1.4; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }} figcaption {{ color: #666; font-size: .9em; }}
pre {{ background: #f6f6f6; padding: .8em; overflow-x: auto; }}
table.evidence th {{ text-align: left; padding-right: 1em; color: #555; font-weight: normal; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<ul class="story">{items}</ul>
<h2>Accuracy against test resolution</h2>
{img(*figures[0])}
<pre>{html.escape(accuracy_table)}</pre>
<h2>Apparent object size</h2>
{img(*figures[1])}
<h2>Accuracy against cost</h2>
{f"<p>{html.escape(deploy)}</p>" if deploy else ""}
{img(*figures[2])}
<h2>{html.escape(cost_heading)}</h2>
<pre>{html.escape(cost_table)}</pre>
<h2>Evidence</h2>
<table class="evidence">{ev}</table>
</body></html>
"""
