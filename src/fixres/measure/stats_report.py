"""Reporting of a :class:`~fixres.measure.stats.StatsResult`: the text table, the JSON record, the files.

Pure formatting and writing; nothing here measures (:mod:`fixres.measure.stats` does).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..core.rundir import output_files, write_json, write_text
from ..core.tables import table
from ..models.checkpoint import versions
from .stats import DISTANCES, STATS_FILES, ZEROS, StatsResult
from .stats_plots import plot_cdfs, plot_vs_resolution

_COLUMNS = [("what", "checkpoint", "s"), ("res", "res", "s"), ("feature_map", "map", "s"),
            ("zeros_pct", "zeros%", ".1f"), ("mean", "mean", ".4f"), ("std", "std", ".4f"), ("median", "median", ".4f"),
            ("p99", "p99", ".3f"), ("w1", "w1", ".4f"), ("ks", "ks", ".3f"), ("channel_shift", "shift", ".3f")]


def stats_json(result: StatsResult) -> dict:
    """Everything measured and what produced it."""
    return {"zeros": ZEROS, "distances": DISTANCES, "reference": result.reference, "sample": result.sample,
            "findings": list(result.findings), "notes": list(result.notes), "device": result.device,
            "versions": versions(), "rows": [r.row() for r in result.rows],
            "skipped_files": [{"path": p, "reason": why} for p, why in result.skipped]}


def stats_table(result: StatsResult) -> str:
    """The plain-text report: one row per checkpoint and resolution, then the findings."""
    rows = result.rows
    ref = rows[0]
    lines = [f"pooled features (the classifier's input) of {ref.n} {ref.split} images, {ref.channels} channels",
             f"reference = train-time: {result.reference['preprocessing']} on {result.reference['images']}",
             "zeros = values exactly 0; w1, ks, shift: distances to the reference (see --json)", ""]
    hidden = {r.label for r in rows if r.features == "equalised"} - {ref.label}  # = the source's
    shown = [{**r.row(), "zeros_pct": 100 * r.zeros, "res": f"{r.resolution} {r.preprocessing}",
              "what": f"{r.label}{' equalised' if r.features == 'equalised' else ''}"}
             for r in rows if r.features == "equalised" or r.label not in hidden]
    lines += [table(shown, _COLUMNS), ""]
    lines += [f"{label}: only its equalised rows are shown; its pooled rows (before the equaliser) equal the "
              "source's and are in the CSV/JSON" for label in sorted(hidden)]
    lines += result.findings
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def write_stats(result: StatsResult, out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write ``stats.csv``, ``stats.json`` and the two figures as the folder ``out_dir``, one
    unit (replacing earlier stats there only with ``overwrite``)."""
    with output_files(out_dir, STATS_FILES, overwrite=overwrite) as out:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(result.rows[0].row()), lineterminator="\n")
        writer.writeheader()
        writer.writerows(r.row() for r in result.rows)
        write_text(out / "stats.csv", buf.getvalue())
        write_json(out / "stats.json", stats_json(result))
        plot_cdfs(result, out / "stats-cdf.png")
        plot_vs_resolution(result, out / "stats-vs-res.png")
    return [Path(out_dir) / name for name in STATS_FILES]
