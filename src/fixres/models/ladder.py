"""A ladder: one model for every budget -- the base weights once, and per test resolution (a
*rung*) only the tensors that adapting to it changed.

The folder (written by :func:`fixres.adapt.ladder.adapt_ladder`, one unit)::

    ladder.json            format, the model, the rungs (resolution, accuracy, cost, where)
    base/                  a fixres checkpoint: the weights every rung starts from
    rungs/<res>/           a fixres checkpoint whose meta.json names base/ ("base") and whose
                           model.safetensors holds only the rung's own tensors (classifier,
                           last normalisation...); any command opens it as a checkpoint

A rung is a plain checkpoint to every command (:func:`~fixres.models.checkpoint.load_checkpoint`
lays its tensors over the base's). :meth:`Ladder.switcher` moves one model in memory from rung
to rung by swapping only those tensors.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from safetensors.torch import load_file
from torch import nn

from ..core.errors import FixresError
from ..core.progress import notice
from .checkpoint import WEIGHTS, read_meta
from .equaliser import Equaliser, attach, detach

LADDER_FILE, LADDER_FORMAT = "ladder.json", "fixres-ladder/1"
BASE, RUNGS = "base", "rungs"
BUDGETS = {"ms": ("latency_ms", "--budget-ms", "ms"), "gflops": ("gflops", "--budget-gflops", "GFLOPs")}


def is_ladder(path: str | Path) -> bool:
    return (Path(path) / LADDER_FILE).is_file()


@dataclass(frozen=True)
class Ladder:
    """An opened ladder folder: its record and where each rung is."""

    root: Path
    record: dict

    @classmethod
    def open(cls, path: str | Path) -> "Ladder":
        root = Path(path)
        try:
            record = json.loads((root / LADDER_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise FixresError(f"{root / LADDER_FILE}: unreadable ({e})") from None
        if record.get("format") != LADDER_FORMAT:
            raise FixresError(f"{root}: not a fixres ladder (format {record.get('format')!r}, expected {LADDER_FORMAT!r})")
        return cls(root, record)

    @property
    def rungs(self) -> list[dict]:
        return self.record["rungs"]

    @property
    def resolutions(self) -> list[int]:
        return [r["test_res"] for r in self.rungs]

    @property
    def base(self) -> Path:
        return self.root / BASE

    def path(self, test_res: int) -> Path:
        """The checkpoint of the rung at ``test_res`` (one line naming the rungs otherwise)."""
        for rung in self.rungs:
            if rung["test_res"] == test_res:
                return self.root / rung["dir"]
        raise FixresError(f"{self.root} has no rung at {test_res}px; its rungs: "
                          f"{', '.join(f'{r}px' for r in self.resolutions)}")

    def choose(self, *, test_res: int | None = None, budget_ms: float | None = None,
               budget_gflops: float | None = None) -> dict:
        """The rung at ``test_res``, or the most accurate one whose cost fits the budgets (by the
        accuracy the ladder recorded on its selection images); one line when none fits."""
        if test_res is not None:
            self.path(test_res)
            return next(r for r in self.rungs if r["test_res"] == test_res)
        limits = {k: v for k, v in (("ms", budget_ms), ("gflops", budget_gflops)) if v is not None}
        if not limits:
            raise FixresError(f"{self.root} is a ladder: give --test-res (rungs: "
                              f"{', '.join(map(str, self.resolutions))}), --budget-ms or --budget-gflops")
        for key, limit in limits.items():
            field, flag, unit = BUDGETS[key]
            if not limit > 0:
                raise FixresError(f"{flag} must be positive, got {limit:g}")
            if any(r.get(field) is None for r in self.rungs):
                raise FixresError(f"{flag}: the ladder's rungs were not timed (built with --no-timing)")
        fits = [r for r in self.rungs if all(r[BUDGETS[k][0]] <= v for k, v in limits.items())]
        if not fits:
            key, limit = next(iter(limits.items()))
            field, flag, unit = BUDGETS[key]
            cheapest = min(self.rungs, key=lambda r: r[field])
            raise FixresError(f"{flag} {limit:g}: no rung fits; the cheapest, {cheapest['test_res']}px, costs "
                              f"{cheapest[field]:.4g} {unit}")
        unstable = [r["test_res"] for r in self.rungs if r.get("timing_stable") is False]
        if "ms" in limits and unstable:
            notice(f"the latency of rung(s) {', '.join(map(str, unstable))}px was unstable when measured (the machine "
                   "was busy): this choice by --budget-ms may differ on a quiet machine")
        return max(fits, key=lambda r: (r["selection_top1"], -r["test_res"]))

    def switcher(self, model: nn.Module, classifier: str | None = None) -> Callable[[int | None], None]:
        """``switch(test_res)`` puts that rung's tensors (and equaliser) into ``model``, which must
        hold the base weights; ``switch(None)``: the base's. Only the rungs' own tensors move."""
        device = next(model.parameters()).device
        base_keys = set().union(*(load_file(str(self.root / r["dir"] / WEIGHTS)).keys() for r in self.rungs))
        base = {k: v.detach().clone() for k, v in model.state_dict().items() if k in base_keys}
        deltas = {r["test_res"]: {k: v.to(device) for k, v in load_file(str(self.root / r["dir"] / WEIGHTS)).items()}
                  for r in self.rungs}
        equalisers = {r["test_res"]: (read_meta(self.root / r["dir"]).adaptation or {}).get("equaliser")
                      for r in self.rungs}

        def switch(test_res: int | None) -> None:
            tensors = base if test_res is None else {**base, **deltas[test_res]}
            model.load_state_dict(tensors, strict=False)
            record = None if test_res is None else equalisers[test_res]
            if record:
                attach(model, record["module"], Equaliser.from_record(record))
            elif classifier is not None:
                detach(model, classifier)
        return switch


def write_ladder(out: Path, base_model: nn.Module, base_meta, rungs: list, record: dict, *,
                 overwrite: bool = False) -> Ladder:
    """Write a ladder folder as one unit (a temporary sibling renamed into place): ``base/`` (the
    full checkpoint of ``base_model``), for each ``(meta, tensors)`` of ``rungs`` its checkpoint
    ``rungs/<test_res>/`` over the base, and ``record`` as ``ladder.json``."""
    from ..core.rundir import atomic_path, write_json
    from .checkpoint import save_checkpoint, save_rung
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, existing="replace" if overwrite else "empty", fsync=True) as tmp:
        tmp.mkdir()
        save_checkpoint(tmp / BASE, base_model, base_meta)
        for meta, tensors in rungs:
            save_rung(tmp / RUNGS / str(meta.preprocessing.test_res), tensors, meta, tmp / BASE)
        write_json(tmp / LADDER_FILE, record)
    return Ladder.open(out)


def ladder_summary(ladder: Ladder) -> str:
    """One line per rung: resolution, accuracy before and after adapting, cost."""
    lines = [f"ladder {ladder.root}: {ladder.record['model']}, {len(ladder.rungs)} rungs ({ladder.record['method']})"]
    for r in ladder.rungs:
        cost = f"{r['gflops']:.3g} GFLOPs" + ("" if r.get("latency_ms") is None else f", {r['latency_ms']:.3g} ms")
        lines.append(f"  {r['test_res']:>4}px  val top-1 {r['before']['top1']:.2f} -> {r['after']['top1']:.2f}  "
                     f"({r['selection_split']} {r['selection_top1']:.2f})  {cost}  {r['tensors']} tensors, "
                     f"{r['bytes'] / 1024:.1f} KiB")
    return "\n".join(lines)


def rung_checkpoint(path: str | Path, test_res: int | None) -> Path:
    """``path`` itself, or for a ladder the checkpoint of its rung at ``test_res``."""
    if not is_ladder(path):
        return Path(path)
    ladder = Ladder.open(path)
    if test_res is None:
        raise FixresError(f"{path} is a ladder: give --test-res, one of its rungs "
                          f"({', '.join(map(str, ladder.resolutions))})")
    return ladder.path(test_res)


__all__ = ["BASE", "LADDER_FILE", "LADDER_FORMAT", "Ladder", "RUNGS", "is_ladder", "ladder_summary", "rung_checkpoint"]
