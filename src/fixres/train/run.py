"""A training run's directory and its position: created or resumed, checkpoints written and pruned,
metric rows logged, the position restored after a kill.

A run directory holds ``config.yaml`` (the resolved settings), ``metrics.jsonl`` (one row per
epoch), ``skipped.json``, ``summary.json`` and ``checkpoints/`` with the links ``last`` and
``best``. Only the main process writes; every process takes part in the collectives of a save.
The loop (:mod:`fixres.train.loop`) owns the model; this module owns the files.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.errors import FixresError
from ..core.options import dump_yaml, read_yaml
from ..core.progress import Progress
from ..core.rundir import append_jsonl, prepare_run_dir, read_jsonl, write_json, write_text
from ..core.runtime import Dist, barrier
from ..models import checkpoint as ckpt
from .config import RESUMABLE_CHANGES, TrainConfig


def stored_config(values: dict, run_dir: Path) -> dict:
    """The settings stored in a run being resumed, after checking ``values`` against them.

    Only settings in ``RESUMABLE_CHANGES`` may differ; any other difference is refused."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FixresError(f"cannot resume: {run_dir} is not a fixres run directory (no config.yaml)")
    stored = read_yaml(path)
    changed = sorted(k for k, v in values.items()
                     if k in stored and k not in RESUMABLE_CHANGES and _norm(stored[k]) != _norm(v))
    if changed:
        raise FixresError(f"cannot resume {run_dir} with different settings: "
                          + ", ".join(f"{k} ({stored[k]!r} -> {values[k]!r})" for k in changed))
    return stored


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


@dataclass
class Position:
    """Where a run is, all of it saved in every checkpoint (``state.pt``) and restored on resume."""

    epoch: int = 0                 # completed epochs
    step_in_epoch: int = 0         # completed optimiser steps of the current epoch
    step: int = 0                  # completed optimiser steps
    train_seconds: float = 0.0
    train_images: int = 0
    # weights ("model", "ema") -> (selection score, epoch) of the best epoch so far (fixres.train.select)
    best: dict = field(default_factory=lambda: {"model": (-1.0, None), "ema": (-1.0, None)})

    def state(self) -> dict:
        # best_top1 / best_epoch: the keys of the model's best in the checkpoints of older versions
        return {**{k: v for k, v in asdict(self).items() if k != "best"}, "best": dict(self.best),
                "best_top1": self.best["model"][0], "best_epoch": self.best["model"][1]}

    @classmethod
    def from_state(cls, state: dict) -> "Position":
        values = {k: state[k] for k in ("epoch", "step_in_epoch", "step", "train_seconds", "train_images")}
        best = {"model": (state["best_top1"], state["best_epoch"]), "ema": (-1.0, None)}
        best.update({k: tuple(v) for k, v in (state.get("best") or {}).items()})
        return cls(**values, best=best)


class RunFolder:
    """The files of one run (written by the main process only)."""

    def __init__(self, root: Path, dist: Dist, keep_last: int):
        self.root, self.dist, self.keep_last = Path(root), dist, keep_last

    @classmethod
    def prepare(cls, cfg: TrainConfig, dist: Dist, *, resume: bool, overwrite: bool) -> "RunFolder":
        """Create the run directory (or check the one to resume), before any work; every rank waits."""
        folder = cls(Path(cfg.out), dist, cfg.keep_last)
        if dist.is_main:
            prepare_run_dir(folder.root, resume=resume, overwrite=overwrite)
            if resume:  # what a crash in the middle of a checkpoint write left behind
                for where in (folder.root, folder.root / "checkpoints"):
                    ckpt.remove_stale_temporaries(where)
        barrier(dist)
        return folder

    @property
    def last(self) -> Path | None:
        link = self.root / "last"
        return link.resolve() if link.exists() else None

    def write_config(self, cfg: TrainConfig) -> None:
        if self.dist.is_main:
            write_text(self.root / "config.yaml", dump_yaml(cfg))

    # ----------------------------------------------------------------- checkpoints
    def save(self, position: Position, model, meta: ckpt.CheckpointMeta, state: dict, ema_model=None, *,
             best: tuple[str, ...] = ()) -> None:
        """Write the checkpoint of ``position`` (main process), point ``last`` (and the ``best``
        links named, e.g. ``best``, ``best-ema``) to it, keep the ``keep_last`` most recent;
        every rank waits for it."""
        if self.dist.is_main:
            name = f"epoch-{position.epoch:04d}" if position.step_in_epoch == 0 else f"step-{position.step:07d}"
            directory = self.root / "checkpoints" / name
            ckpt.save_checkpoint(directory, model, meta, state, ema_model=ema_model)
            ckpt.point(self.root / "last", directory)
            for link in best:
                ckpt.point(self.root / link, directory)
            self._prune()
        barrier(self.dist)

    def _prune(self) -> None:
        """Keep the ``keep_last`` most recent checkpoints (and best/last); a directory without
        metadata can only be what an interrupted deletion of an older fixres left: removed too."""
        keep = {(self.root / n).resolve() for n in ckpt.LINKS if (self.root / n).exists()}
        entries = [p for p in (self.root / "checkpoints").iterdir() if not p.name.startswith(".")]
        broken = [p for p in entries if not (p / ckpt.META).is_file()]
        ordered = sorted((p for p in entries if p not in broken), key=lambda p: ckpt.read_meta(p).step)
        for old in broken + ordered[:-self.keep_last]:
            if old.resolve() not in keep:
                ckpt.delete_checkpoint(old)

    def restore(self, classes: tuple[str, ...], ema: bool) -> tuple[dict, dict | None, dict, Path] | None:
        """The last checkpoint's ``(weights, EMA weights, training state, directory)``, or None (a
        run killed before its first checkpoint starts again; its rows are dropped)."""
        last = self.last
        if last is None:
            self.log(f"no checkpoint in {self.root} yet: starting from the beginning")
            self.forget_rows_after(0)   # a kill between a checkpoint's rename and `last` leaves rows
            return None
        weights, meta, directory = ckpt.load_checkpoint(last)
        if tuple(meta.class_names) != tuple(classes):
            raise FixresError(f"{directory}: checkpoint classes differ from the data's")
        ema_weights = ckpt.load_checkpoint(directory, ema=True)[0] if ema else None
        return weights, ema_weights, ckpt.load_train_state(directory), directory

    # ----------------------------------------------------------------- rows and records
    def forget_rows_after(self, step: int) -> None:
        """Drop the log rows written after the checkpoint resumed from: they will be redone."""
        if self.dist.is_main:
            rows = [r for r in read_jsonl(self.root / "metrics.jsonl") if r.get("step", 0) <= step]
            write_text(self.root / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    def append_row(self, row: dict, skipped: dict) -> None:
        """One epoch's row, and the files skipped so far (before the checkpoint: a kill before it
        lands drops the row on resume, rows past the checkpoint are redone; after, it would be lost)."""
        if self.dist.is_main:
            append_jsonl(self.root / "metrics.jsonl", row)
            files = [{"split": s, "path": p, "reason": r} for (s, p), r in sorted(skipped.items())]
            write_json(self.root / "skipped.json", {"count": len(files), "files": files})

    def rows(self) -> list[dict]:
        return read_jsonl(self.root / "metrics.jsonl") if self.dist.is_main else []

    def summary(self, position: Position, about: dict, ema: bool) -> dict:
        """``summary.json``: ``about`` the run, its position, and its last and best epochs' figures."""
        rows, p = self.rows(), position
        last = rows[-1] if rows else {}
        best = {w: next((r for r in rows if r.get("epoch") == epoch), {}) for w, (_, epoch) in p.best.items()}
        summary = {"run_dir": str(self.root), **about, "epochs": p.epoch, "steps": p.step,
                   "best_epoch": p.best["model"][1], "best_val_top1": best["model"].get("val_top1"),
                   "last_val_top1": last.get("val_top1"), "last_ema_val_top1": last.get("ema_val_top1"),
                   "train_seconds": round(p.train_seconds, 2),
                   "train_images_per_s": round(p.train_images / max(p.train_seconds, 1e-9), 1),
                   "versions": ckpt.versions()}
        if ema:
            summary.update(best_ema_epoch=p.best["ema"][1], best_ema_val_top1=best["ema"].get("ema_val_top1"))
        return summary

    def write_summary(self, summary: dict) -> None:
        if self.dist.is_main:
            write_json(self.root / "summary.json", summary)

    def log(self, text: str) -> None:
        if self.dist.is_main:
            Progress.write(text)


def summary_text(summary: dict) -> str:
    """What ``fixres train`` prints of a finished run's ``summary.json``."""
    s = summary
    ramp = (s.get("recipe") or {}).get("train_res_schedule")
    res = f"{ramp['start']}->{ramp['end']}px (progressive)" if ramp else f"{s['train_res']}px"
    on = {"holdout": "the held-out training images", "val": "val"}.get(s.get("best_chosen_on"), "val")
    best = "-" if s.get("best_val_top1") is None else f"{s['best_val_top1']:.2f}"
    return (f"{s['model']} trained at {res} for {s['epochs']} epochs in {s['train_seconds']:.0f}s "
            f"({s['train_images_per_s']:.0f} img/s); best epoch {s['best_epoch']} (chosen on {on}): val top-1 "
            f"{best} at {s['test_res']}px; run: {s['run_dir']}")
