"""The paper-style tables of a grid: top-1 (train res x test res) without and with adaptation,
the cost per training resolution, and the published numbers beside the measured ones.

Files: ``grid.md`` (the tables), ``grid.csv`` (one row per cell and adaptation),
``costs.csv`` (one row per training resolution), ``grid.json`` (everything, with the
settings, device and versions) and ``grid.png`` (top-1 against test resolution).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from ...core.plots import PALETTE, new_figure, save, styled
from ...core.rundir import write_json, write_text
from ...core.tables import table
from ...models.checkpoint import versions
from .config import config_dict

GRID_FILES = ("grid.md", "grid.csv", "costs.csv", "grid.json", "grid.png")
ROW_FIELDS = ("train_res", "test_res", "adaptation", "top1", "top5", "loss", "n", "n_skipped", "best_in_row",
              "chosen_in_row", "seconds")
COST_FIELDS = ("train_res", "epochs", "status", "train_seconds", "train_images_per_s", "wall_seconds",
               "peak_memory_mb", "memory_at_start_mb", "gflops_train_res", "sweep_seconds", "adapt_seconds", "device")


def _best(rows: list[dict]) -> dict | None:
    """Highest top-1; ties: lower loss, then lower (cheaper) resolution (as ``fixres sweep``)."""
    return max(rows, key=lambda r: (r["top1"], -r["loss"], -r["test_res"])) if rows else None


@dataclass
class GridReport:
    config: dict
    data: str
    rows: list[dict]                    # one per (train_res, test_res, adaptation)
    costs: list[dict]                   # one per train_res
    selection: dict                     # train_res -> how the "chosen" cell was chosen
    seconds: float = 0.0                # this invocation's wall time
    flops: dict = field(default_factory=dict)   # train_res -> {res: FLOPs}

    # ------------------------------------------------------------------ building
    @classmethod
    def from_cells(cls, cfg, cells: dict[str, dict], *, data: str, seconds: float = 0.0) -> "GridReport":
        rows, costs, selection, flops = [], [], {}, {}
        for r in cfg.train_res:
            train, sweep = cells[f"train-{r}"], cells[f"sweep-{r}"]
            chosen = (sweep.get("chosen") or {}).get("test_res")
            selection[r] = {"test_res": chosen, **sweep.get("selection", {})}
            plain = [{"train_res": r, "test_res": s["test_res"], "adaptation": "none", "top1": s["top1"],
                      "top5": s["top5"], "loss": s["loss"], "n": s["n"], "n_skipped": s["n_skipped"],
                      "chosen_in_row": s["test_res"] == chosen, "seconds": None} for s in sweep["rows"]]
            adapted = []
            for k in cfg.adapted_at:
                a = cells[f"adapt-{r}-{k}"]
                adapted.append({"train_res": r, "test_res": k, "adaptation": a["method"], **{
                    key: a["after"][key] for key in ("top1", "top5", "loss", "n", "n_skipped")},
                    "chosen_in_row": None, "seconds": a["seconds"]})
            for group in (plain, adapted):
                best = _best(group)
                for row in group:
                    row["best_in_row"] = row is best
            rows += plain + adapted
            flops[r] = {int(k): v for k, v in train["flops_per_image"].items()}
            costs.append({
                "train_res": r, "epochs": train["epochs"], "status": train["status"],
                "train_seconds": train["train_seconds"], "train_images_per_s": train["train_images_per_s"],
                "wall_seconds": train["wall_seconds"], "peak_memory_mb": train["peak_memory_mb"],
                "memory_at_start_mb": train.get("memory_at_start_mb"),
                "peak_memory_kind": train["peak_memory_kind"],
                "gflops_train_res": flops[r][r] / 1e9 if r in flops[r] else None,
                "sweep_seconds": sweep["seconds"], "adapt_seconds": round(sum(a["seconds"] or 0 for a in adapted), 2),
                "device": train["device"]})
        return cls(config_dict(cfg), data, rows, costs, selection, seconds, flops)

    # ------------------------------------------------------------------ lookups
    def cell(self, train_res: int, test_res: int, adapted: bool) -> dict | None:
        return next((row for row in self.rows if row["train_res"] == train_res and row["test_res"] == test_res
                     and (row["adaptation"] != "none") == adapted), None)

    @property
    def train_res(self) -> list[int]:
        return list(self.config["train_res"])

    @property
    def test_res(self) -> list[int]:
        return list(self.config["test_res"])

    @property
    def method(self) -> str | None:
        return next((r["adaptation"] for r in self.rows if r["adaptation"] != "none"), None)

    # ------------------------------------------------------------------ tables
    def matrix(self, adapted: bool, *, markdown: bool) -> str:
        """Top-1 (rows: train res, columns: test res); the row's best on val marked."""
        head = ["train \\ test", *map(str, self.test_res)]
        lines = []
        for r in self.train_res:
            cells = [str(r)]
            for k in self.test_res:
                row = self.cell(r, k, adapted)
                if row is None:
                    cells.append("-")
                    continue
                text = f"{row['top1']:.2f}"
                if row["best_in_row"]:
                    text = f"**{text}**" if markdown else f"{text}*"
                if row["chosen_in_row"]:
                    text += " ^" if markdown else "^"
                cells.append(text)
            lines.append(cells)
        if markdown:
            return "\n".join(["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
                             + ["| " + " | ".join(c) + " |" for c in lines])
        widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]
        out = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in [head, *lines]]
        out.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(out)

    def cost_table(self, *, markdown: bool) -> str:
        columns = [("train_res", "train res", "d"), ("epochs", "epochs", "d"), ("train_seconds", "train (s)", ".1f"),
                   ("train_images_per_s", "train img/s", ".1f"), ("peak_memory_mb", "peak memory (MiB)", ".0f"),
                   ("memory_at_start_mb", "at start (MiB)", ".0f"),
                   ("gflops_train_res", "GFLOPs/img at train res", ".3f"), ("sweep_seconds", "sweep (s)", ".1f"),
                   ("adapt_seconds", "adapt (s)", ".1f")]
        return markdown_table(self.costs, columns) if markdown else table(self.costs, columns)

    def flops_table(self, *, markdown: bool) -> str:
        counted = self.flops[self.train_res[0]]
        row = {str(k): counted[k] / 1e9 if k in counted else None for k in self.test_res}
        columns = [(str(k), f"{k}px", ".3f") for k in self.test_res]
        return markdown_table([row], columns) if markdown else table([row], columns)

    def expected_rows(self) -> list[dict]:
        out = []
        for e in self.config.get("expected") or []:
            got = self.cell(e["train_res"], e["test_res"], e["adapted"])
            out.append({**e, "adapted": "yes" if e["adapted"] else "no",
                        "measured": got["top1"] if got else None,
                        "difference": got["top1"] - e["top1"] if got else None})
        return out

    def _legend(self) -> str:
        chosen = {s.get("split") for s in self.selection.values() if s.get("test_res") is not None}
        where = ", ".join(sorted(c for c in chosen if c)) or "-"
        return ("Bold (`*` in the terminal): the best of the row on val -- as in the paper's tables, chosen on the "
                f"reported split, so optimistic. `^`: the resolution chosen without val, on {where} images "
                "(each sweep's selection note is in grid.json).")

    def markdown(self) -> str:
        cfg = self.config
        n = next((r["n"] for r in self.rows), 0)
        parts = [f"# FixRes grid: {cfg['model']}", ""]
        if cfg.get("description"):
            parts += [cfg["description"].strip(), ""]
        parts += [f"Data: `{self.data}` (val: {n} images). Training: {', '.join(map(str, self.train_res))} px; "
                  f"test: {', '.join(map(str, self.test_res))} px. Rows: training resolution; columns: test "
                  "resolution; top-1 (%) on val, single centre crop.", "",
                  "## Top-1 without adaptation", "", self.matrix(False, markdown=True), "", self._legend(), ""]
        if self.method:
            adapt = ", ".join(f"{k} {v}" for k, v in (cfg.get("adapt") or {}).items() if k != "method") or "defaults"
            parts += [f"## Top-1 after adaptation at the test resolution ({self.method}; {adapt})", "",
                      self.matrix(True, markdown=True), "", "bold: best of the row on val.", ""]
        kinds = sorted({c["peak_memory_kind"] for c in self.costs})
        parts += ["## Cost per training resolution", "", self.cost_table(markdown=True), "",
                  f"Peak memory: {'; '.join(kinds)}. Train time: the training loops (per-epoch evaluation "
                  "excluded), summed over resumed sessions; img/s = training images / train time.", "",
                  "## GFLOPs per image at each test resolution", "", self.flops_table(markdown=True), "",
                  "FLOPs: 2 per multiply-add of convolutions and matrix products (torch FlopCounterMode); "
                  "timm and most papers quote multiply-adds (half).", ""]
        expected = self.expected_rows()
        if expected:
            columns = [("train_res", "train", "d"), ("test_res", "test", "d"), ("adapted", "adapted", "s"),
                       ("top1", "published top-1", ".1f"), ("measured", "measured top-1", ".2f"),
                       ("difference", "difference", "+.2f"), ("source", "source", "s")]
            parts += ["## Published numbers beside ours", "", markdown_table(expected, columns), ""]
        if cfg.get("expected_cost"):
            columns = [("stage", "stage", "s"), ("images", "images", ",d"), ("images_per_s", "img/s", ",.0f"),
                       ("hours", "hours", ".2f"), ("basis", "throughput measured", "s")]
            parts += ["## Expected cost of the full-size run", "", markdown_table(cfg["expected_cost"], columns), "",
                      "hours = images / (img/s) / 3600.", ""]
        return "\n".join(parts)

    def text(self) -> str:
        lines = ["top-1 (%) on val without adaptation (rows: train res, columns: test res; *: best of the row "
                 "on val, ^: chosen without val)", self.matrix(False, markdown=False)]
        if self.method:
            lines += ["", f"top-1 (%) on val after adaptation ({self.method}) at the test resolution",
                      self.matrix(True, markdown=False)]
        lines += ["", "cost per training resolution", self.cost_table(markdown=False)]
        return "\n".join(lines)

    # ------------------------------------------------------------------ files
    def to_json(self) -> dict:
        return {"config": self.config, "data": self.data, "rows": self.rows, "costs": self.costs,
                "selection": {str(k): v for k, v in self.selection.items()},
                "flops_per_image": {str(r): {str(k): v for k, v in f.items()} for r, f in self.flops.items()},
                "expected": self.expected_rows(), "seconds_this_invocation": self.seconds, "versions": versions()}

    def write(self, out: str | Path) -> list[Path]:
        out = Path(out)
        write_text(out / "grid.md", self.markdown())
        write_text(out / "grid.csv", _csv(self.rows, ROW_FIELDS))
        write_text(out / "costs.csv", _csv(self.costs, COST_FIELDS))
        write_json(out / "grid.json", self.to_json())
        self.plot(out / "grid.png")
        return [out / name for name in GRID_FILES]

    def plot(self, path: Path) -> Path:
        with styled():
            fig, ax = new_figure(6.4, 4.2)
            for i, r in enumerate(self.train_res):
                colour = PALETTE[i % len(PALETTE)]
                for adapted, style, marker in ((False, "-", "o"), (True, "--", "s")):
                    pts = sorted((row["test_res"], row["top1"]) for row in self.rows if row["train_res"] == r
                                 and (row["adaptation"] != "none") == adapted)
                    if pts:
                        label = f"train {r}px" + (f", adapted ({self.method})" if adapted else "")
                        ax.plot(*zip(*pts), linestyle=style, marker=marker, color=colour, label=label)
                ax.axvline(r, color=colour, linestyle=":", linewidth=1, alpha=0.6)
            ax.set_xlabel("test resolution (px)")
            ax.set_ylabel("top-1 accuracy on val (%)")
            ax.set_title(f"{self.config['model']}: top-1 against test resolution (dotted: train resolutions)")
            ax.legend(loc="best", frameon=False)
            return save(fig, path)


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(k) is None else format(r[k], f) for k, _, f in columns) + " |")
    return "\n".join(lines)


def _csv(rows: list[dict], fields: tuple[str, ...]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
