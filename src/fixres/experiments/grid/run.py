"""Running a grid: train at each resolution, sweep each run, adapt at each test resolution.

Every finished piece of work is a *cell*, a JSON file written atomically under
``OUT/cells/`` (``train-R.json``, ``sweep-R.json``, ``adapt-R-K.json``). A grid that is
run again -- after an interruption, or to add nothing -- reads the cells that exist and
computes only the missing ones: a finished training run is reused, an interrupted one is
continued from its last checkpoint (``fit(..., resume=True)``, exact), a finished sweep or
adaptation is never recomputed. ``OUT/grid.yaml`` records the settings; a directory that
holds another grid's cells is refused, naming the settings that differ.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from ...adapt import AdaptOptions, adapt_checkpoint
from ...core.errors import FixresError
from ...core.options import read_yaml
from ...core.progress import Progress
from ...core.rundir import ensure_writable_dir, write_json, write_text
from ...core.runtime import resolve_device
from ...data.synth import synthesize
from ...measure.costs import PeakMemory, model_flops
from ...measure.infer import EvalResult
from ...measure.sweep import SweepOptions, sweep_checkpoint
from ...measure.sweep_report import sweep_json, write_sweep
from ...models.checkpoint import versions
from ...train.config import TrainConfig
from ...train.loop import fit
from .config import (
    GridConfig,
    adapt_options,
    check_data_fits,
    config_dict,
    differing_keys,
)

CELLS = "cells"


class GridDir:
    """A grid (or transfer) directory: its recorded settings and its cells."""

    def __init__(self, out: str | Path, settings: dict, *, marker: str = "grid.yaml"):
        self.root, self.settings, self.marker = Path(out), settings, marker

    def open(self) -> "GridDir":
        """Create the directory, or check that it holds this same grid; record the settings."""
        import yaml
        path = self.root / self.marker
        if self.root.exists() and not self.root.is_dir():
            raise FixresError(f"output {self.root} exists and is not a directory")
        if path.is_file():
            changed = differing_keys(read_yaml(path), self.settings)
            if changed:
                raise FixresError(f"{self.root} holds the cells of a different {self.marker.split('.')[0]} "
                                  f"(settings differ: {'; '.join(changed)}); use another out, or the same settings")
        elif self.root.is_dir() and any(self.root.iterdir()):
            raise FixresError(f"{self.root} is not empty and holds no {self.marker}: refusing to write into it "
                              "(choose another out)")
        ensure_writable_dir(self.root / CELLS)
        write_text(path, yaml.safe_dump(self.settings, sort_keys=False))
        return self

    def cell(self, name: str) -> dict | None:
        path = self.root / CELLS / f"{name}.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None    # written atomically, so only a foreign file can be unreadable: recompute it

    def save(self, name: str, cell: dict) -> dict:
        write_json(self.root / CELLS / f"{name}.json", cell)
        return cell

    def path(self, name: str) -> Path:
        return self.root / CELLS / name


# ----------------------------------------------------------------------------- stages
def ensure_data(cfg: GridConfig, root: Path, log: Callable[[str], None], quiet: bool) -> Path:
    """The dataset directory: ``cfg.data``, or the embedded synthetic dataset in ``root/data``
    (synthesised once)."""
    if cfg.data is not None:
        return Path(cfg.data)
    data = root / "data"
    if (data / "synth.json").is_file():
        return data
    log(f"synthesising the embedded dataset: {cfg.synth_classes} classes x ({cfg.synth_train_per_class} train + "
        f"{cfg.synth_val_per_class} val) images, seed {cfg.synth_seed}")
    try:
        synthesize(data, classes=cfg.synth_classes, train_per_class=cfg.synth_train_per_class,
                   val_per_class=cfg.synth_val_per_class, seed=cfg.synth_seed,
                   workers=cfg.workers or None, progress=not quiet)
    except (ValueError, FileExistsError) as e:
        raise FixresError(f"cannot synthesise the embedded dataset: {e}") from None
    return data


def _finished_summary(run: Path, epochs: int) -> dict | None:
    path = run / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("epochs", 0) >= epochs else None


def ensure_trained(gdir: GridDir, name: str, tcfg: TrainConfig, flops_at: tuple[int, ...], *,
                   log: Callable[[str], None], quiet: bool) -> dict:
    """The training cell ``name``: reused, continued (``resume=True``) or trained; with its cost."""
    cell = gdir.cell(name)
    if cell is not None:
        return cell
    run = Path(tcfg.out)
    summary = _finished_summary(run, tcfg.epochs)
    status, wall, memory = "reused", None, None
    if summary is None:
        resume = (run / "config.yaml").is_file()
        status = "resumed" if resume else "trained"
        log(f"{'continuing' if resume else 'training'} {tcfg.model} at {tcfg.train_res}px for {tcfg.epochs} epochs "
            f"-> {run}")
        t0 = time.perf_counter()
        with PeakMemory(resolve_device(tcfg.device)) as memory:
            summary = fit(tcfg, resume=resume, quiet=quiet).summary
        wall = round(time.perf_counter() - t0, 2)
    else:
        log(f"reusing the finished run {run}")
    try:
        flops = model_flops(tcfg.model, summary["classes"], sorted({tcfg.train_res, *flops_at}))
    except FixresError as e:          # e.g. a hub model that cannot be built offline: no FLOPs, say why
        log(f"FLOPs not counted: {e}")
        flops = {}
    return gdir.save(name, {
        "train_res": tcfg.train_res, "run_dir": str(run), "status": status, "epochs": summary["epochs"],
        "train_seconds": summary["train_seconds"], "train_images_per_s": summary["train_images_per_s"],
        "train_images": round(summary["train_seconds"] * summary["train_images_per_s"]),
        "wall_seconds": wall, "best_val_top1": summary.get("best_val_top1"),
        "last_val_top1": summary.get("last_val_top1"),
        "peak_memory_mb": memory.mb if memory else summary.get("peak_memory_mb"),
        "memory_at_start_mb": memory.start_mb if memory else None,
        "peak_memory_kind": memory.kind if memory else "as recorded by fixres train (process peak)",
        "flops_per_image": {str(k): v for k, v in flops.items()},
        "device": summary.get("device"), "classes": summary["classes"], "versions": versions()})


def ensure_swept(gdir: GridDir, name: str, checkpoint: Path, data: Path, test_res: tuple[int, ...], cfg, *,
                 quiet: bool, log: Callable[[str], None]) -> dict:
    """The sweep cell ``name``: val at every resolution of ``test_res`` in one pass (``cfg``:
    select_on, sweep_batch_size, workers, device, amp)."""
    cell = gdir.cell(name)
    if cell is not None:
        return cell
    log(f"sweeping {checkpoint.name} at {', '.join(map(str, test_res))} px")
    t0 = time.perf_counter()
    # timing=False: a grid compares accuracies across runs; its cost table counts FLOPs (timings of
    # a shared machine would differ from cell to cell for no reason of the model's)
    result = sweep_checkpoint(checkpoint, data,
                              SweepOptions(test_res=test_res, select_on=cfg.select_on, timing=False,
                                           batch_size=cfg.sweep_batch_size, workers=cfg.workers, device=cfg.device,
                                           amp=cfg.amp),
                              quiet=quiet)
    seconds = round(time.perf_counter() - t0, 2)
    write_sweep(result, gdir.path(name), overwrite=True)
    return gdir.save(name, {**sweep_json(result), "seconds": seconds})


def swept_result(sweep: dict, test_res: int) -> EvalResult | None:
    """The sweep cell's val result at ``test_res`` (the model before adaptation), if swept."""
    row = next((r for r in sweep["rows"] if r["test_res"] == test_res), None)
    return None if row is None else EvalResult(row["top1"], row["top5"], row["loss"], row["n"], row["n_skipped"],
                                               row["test_res"], row["crop_pct"], row["interpolation"])


def ensure_adapted(gdir: GridDir, name: str, checkpoint: Path, data: Path, opts: AdaptOptions, *,
                   out: Path | None, log: Callable[[str], None], before: EvalResult | None = None) -> dict:
    """The adaptation cell ``name``: ``checkpoint`` adapted at ``opts.test_res`` (saved in ``out``
    if given), val before and after (``before``: the val result already measured by the sweep)."""
    cell = gdir.cell(name)
    if cell is not None:
        return cell
    result = adapt_checkpoint(checkpoint, data, opts, out=out, overwrite=True, quiet=True, before=before)
    log(f"adapted {checkpoint.name} at {opts.test_res}px ({opts.method}): val top-1 "
        f"{result.before.top1:.2f} -> {result.after.top1:.2f} in {result.seconds:.1f}s")
    return gdir.save(name, {"test_res": opts.test_res, "method": opts.method, "before": result.before.row(),
                            "after": result.after.row(), "seconds": round(result.seconds, 2),
                            "checkpoint": str(result.out) if result.out else None, "report": result.report})


# ----------------------------------------------------------------------------- the grid
def run_grid(cfg: GridConfig, *, quiet: bool = False, log: Callable[[str], None] | None = None):
    """Run (or continue) the grid of ``cfg`` in ``cfg.out``; returns its :class:`GridReport`,
    whose files (grid.md, grid.csv, costs.csv, grid.json, grid.png) are written there."""
    from .report import GridReport
    log = log or ((lambda text: None) if quiet else (lambda text: Progress.write(f"[grid] {text}")))
    t0 = time.perf_counter()
    if cfg.data is not None:
        check_data_fits(cfg.train_res, cfg.data)       # before anything is written
    gdir = GridDir(cfg.out, config_dict(cfg)).open()
    data = ensure_data(cfg, gdir.root, log, quiet)
    cells: dict[str, dict] = {}
    for r in cfg.train_res:
        tcfg = cfg.train_config(r, data=str(data))
        cells[f"train-{r}"] = ensure_trained(gdir, f"train-{r}", tcfg, cfg.test_res, log=log, quiet=quiet)
        checkpoint = Path(tcfg.out)   # its best epoch, as every command opens a run (chosen on train.holdout when set)
        cells[f"sweep-{r}"] = ensure_swept(gdir, f"sweep-{r}", checkpoint, data, cfg.test_res, cfg, quiet=quiet,
                                           log=log)
        for k in cfg.adapted_at:
            name = f"adapt-{r}-{k}"
            opts = adapt_options(cfg.adapt, k, device=cfg.device, workers=cfg.workers, amp=cfg.amp)
            cells[name] = ensure_adapted(gdir, name, checkpoint, data, opts, log=log,
                                         out=gdir.path(name) if cfg.keep_adapted else None,
                                         before=swept_result(cells[f"sweep-{r}"], k))
    report = GridReport.from_cells(cfg, cells, data=str(data), seconds=round(time.perf_counter() - t0, 2))
    report.write(gdir.root)
    return report
