"""Robustness beside clean accuracy: corrupted rows, calibration, and the objective a sweep
chooses its best and deployment resolutions on.

The objectives (``--objective``), each measured on the selection images (held-out training
images by default; never val), corrupted with the same seeds as the reported ones:

* ``clean``: top-1 on the clean images (the default, as before);
* ``corrupted``: the mean top-1 over the corruptions swept (``--corrupt``);
* ``shifted``: top-1 on a split of the shifted distribution kept for choosing
  (``--shift-select``, e.g. the ``shifted-holdout`` that ``fixres data synth --shift`` writes),
  not the one reported (``--split shifted``);
* ``mean``: the mean of the clean top-1 and each other objective measured.
"""
from __future__ import annotations

import dataclasses
import statistics
from typing import Sequence

from ..core.errors import FixresError
from ..core.runtime import Dist
from .choose import choose_best
from .infer import fit_temperature

OBJECTIVES = ("clean", "corrupted", "shifted", "mean")


def split_variants(rows: Sequence, geometries: int) -> tuple[tuple, tuple]:
    """``(clean rows, corrupted rows)`` of a variant-major pass (the clean variant first)."""
    return tuple(rows[:geometries]), tuple(rows[geometries:])


def mean_over_corruptions(rows: Sequence) -> tuple:
    """Per geometry, the mean top-1, top-5, loss and ECE over the corrupted rows (``corruption``
    "mean"), in the geometry order of the first corruption."""
    by: dict = {}
    for r in rows:
        by.setdefault((r.test_res, r.crop_pct), []).append(r)
    out = []
    for group in by.values():
        def mean(field):
            values = [getattr(r, field) for r in group if getattr(r, field) is not None]
            return statistics.fmean(values) if values else None
        out.append(dataclasses.replace(group[0], corruption="mean", top1=mean("top1"), top5=mean("top5"),
                                       loss=mean("loss"), ece=mean("ece"), nll=mean("nll")))
    return tuple(out)


def objective_rows(objective: str, clean: Sequence, corrupted: Sequence, shifted: Sequence) -> tuple:
    """The rows whose top-1 is the objective's figure, per geometry (what the best and the
    deployments are chosen on)."""
    if objective == "clean":
        return tuple(clean)
    parts = {"corrupted": mean_over_corruptions(corrupted) if corrupted else (), "shifted": tuple(shifted)}
    if objective in parts:
        if not parts[objective]:
            raise FixresError(f"--objective {objective} needs " + ("--corrupt" if objective == "corrupted" else
                                                                   "--shift-select SPLIT"))
        return parts[objective]
    measured = [clean] + [p for p in parts.values() if p]
    if len(measured) == 1:
        raise FixresError("--objective mean needs another objective measured: --corrupt and/or --shift-select")
    at = [{(r.test_res, r.crop_pct): r for r in rows} for rows in measured]
    return tuple(dataclasses.replace(r, corruption="objective mean",
                                     top1=statistics.fmean(m[(r.test_res, r.crop_pct)].top1 for m in at),
                                     loss=statistics.fmean(m[(r.test_res, r.crop_pct)].loss for m in at))
                 for r in clean)


def choices_by_objective(clean: Sequence, corrupted: Sequence, shifted: Sequence) -> dict:
    """What each measurable objective would have chosen (``(test_res, crop_pct)``)."""
    out = {}
    for objective in OBJECTIVES:
        try:
            rows = objective_rows(objective, clean, corrupted, shifted)
        except FixresError:
            continue
        if rows:
            best = choose_best(rows)
            out[objective] = (best.test_res, best.crop_pct)
    return out


def fitted_temperatures(tallies: Sequence, geometries: int, dist: Dist) -> list[float]:
    """One temperature per geometry, fitted on the clean selection images' logits."""
    return [fit_temperature(*t.logits(dist)) for t in tallies[:geometries]]


def check_objective(objective: str, corrupt, shift_select: str | None, select_on: str | None) -> None:
    if objective not in OBJECTIVES:
        raise FixresError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if objective == "corrupted" and not corrupt:
        raise FixresError("--objective corrupted needs --corrupt NAME:SEVERITY ... (e.g. all:3)")
    if objective == "shifted" and not shift_select:
        raise FixresError("--objective shifted needs --shift-select SPLIT: images of the shifted distribution kept "
                          "for choosing (fixres data synth --shift writes shifted-holdout/)")
    if objective != "clean" and select_on == "none":
        raise FixresError(f"--objective {objective} chooses on the selection images, which --select-on none turns off")
