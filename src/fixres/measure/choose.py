"""Which test resolution to deploy: choices over sweep rows by accuracy and cost.

Pure functions over rows (any object with ``test_res``, ``crop_pct``, ``top1``, ``loss``,
``gflops`` and ``latency_ms`` attributes, e.g. :class:`fixres.measure.sweep.SweepRow`): no model, no
data. The sweep calls them on the rows of its *selection* split (held-out training images
by default), never on the reported one, exactly as it chooses the best resolution; the
chosen geometry is then looked up in the reported rows.

* :func:`choose_best`: the most accurate geometry.
* :func:`within_best`: the smallest resolution whose top-1 is within ``points`` of the best
  (``--within P``): "how much resolution do I need to stay near the best?".
* :func:`under_budget`: the most accurate geometry whose cost fits a limit
  (``--budget-ms`` on the single-image latency, ``--budget-gflops`` on FLOPs per image).
* :func:`pareto_front`: the geometries that no other beats on both accuracy and cost.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from ..core.errors import FixresError
from ..core.pareto import pareto_front  # noqa: F401  (a deployment rule too: re-exported)

# Cost field of a row -> (its flag, its unit).
BUDGETS = {"latency_ms": ("--budget-ms", "ms"), "gflops": ("--budget-gflops", "GFLOPs")}


def choose_best(rows: Sequence[Any]) -> Any:
    """Highest top-1; ties go to the lower loss, then the lower (cheaper) resolution."""
    return max(rows, key=lambda r: (r.top1, -r.loss, -r.test_res))


def within_best(rows: Sequence[Any], points: float) -> Any:
    """The smallest resolution whose top-1 is at most ``points`` below the best top-1 (at that
    resolution, the most accurate crop_pct). ``points = 0`` gives the cheapest best."""
    if points < 0:
        raise FixresError(f"--within must not be negative, got {points:g}")
    best = choose_best(rows)
    near = [r for r in rows if r.top1 >= best.top1 - points - 1e-9]
    return min(near, key=lambda r: (r.test_res, -r.top1, r.loss))


def _limits(ms: float | None, gflops: float | None) -> dict[str, float]:
    return {k: v for k, v in (("latency_ms", ms), ("gflops", gflops)) if v is not None}


def fits_budget(rows: Sequence[Any], *, ms: float | None = None, gflops: float | None = None) -> list:
    """The rows whose costs are within every limit given. Raises (one line) when a limit has
    no measured cost to compare with, or when nothing fits: the message names the cheapest
    resolution and its cost."""
    limits = _limits(ms, gflops)
    if not limits:
        raise FixresError("no budget given (--budget-ms or --budget-gflops)")
    for field, limit in limits.items():
        flag, unit = BUDGETS[field]
        if limit <= 0:
            raise FixresError(f"{flag} must be positive, got {limit:g}")
        if any(getattr(r, field) is None for r in rows):
            raise FixresError(f"{flag} needs the {unit} of every resolution, which were not measured"
                              + (" (drop --no-timing)" if field == "latency_ms" else ""))
    fits = [r for r in rows if all(getattr(r, f) <= limit for f, limit in limits.items())]
    if fits:
        return fits
    for field, limit in limits.items():
        flag, unit = BUDGETS[field]
        cheapest = min(rows, key=lambda r: (getattr(r, field), r.test_res))
        if getattr(cheapest, field) > limit:
            raise FixresError(f"{flag} {limit:g} is below the cheapest resolution: {cheapest.test_res}px "
                              f"at {getattr(cheapest, field):.4g} {unit}")
    raise FixresError("no resolution fits " + " and ".join(f"{BUDGETS[f][0]} {v:g}" for f, v in limits.items())
                      + " together")


def under_budget(rows: Sequence[Any], *, ms: float | None = None, gflops: float | None = None) -> Any:
    """The most accurate row (as :func:`choose_best`) among those within the budget."""
    return choose_best(fits_budget(rows, ms=ms, gflops=gflops))


@dataclass(frozen=True)
class Deployment:
    """A deployment choice, made on the selection split, reported on the reported one.

    ``top1``/``best_top1`` are the reported split's figures at the chosen and at the best
    geometry; ``*_ratio`` compare the chosen geometry with the best (1.0 = the same), the
    accuracy on ONE set of images, the one both were chosen on (``selection_top1`` /
    ``best_selection_top1``): a ratio of a val figure to a holdout-chosen best could exceed 1.
    ``unstable_timings``: the resolutions whose measured latency a latency budget compared
    while their timings were not stable (:mod:`fixres.measure.timing`).
    """

    rule: str                    # e.g. "within 1 pt of the best", "under 2 ms"
    test_res: int
    crop_pct: float
    chosen_on: str
    selection_top1: float
    best_test_res: int
    best_crop_pct: float
    best_selection_top1: float
    report_split: str
    top1: float | None
    best_top1: float | None
    gflops: float | None
    best_gflops: float | None
    latency_ms: float | None
    best_latency_ms: float | None
    unstable_timings: tuple[int, ...] = ()

    @staticmethod
    def _ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    @property
    def accuracy_ratio(self) -> float | None:
        return self._ratio(self.selection_top1, self.best_selection_top1)

    @property
    def gflops_ratio(self) -> float | None:
        return self._ratio(self.gflops, self.best_gflops)

    @property
    def latency_ratio(self) -> float | None:
        return self._ratio(self.latency_ms, self.best_latency_ms)

    def row(self) -> dict:
        return {**asdict(self), "accuracy_ratio": self.accuracy_ratio, "gflops_ratio": self.gflops_ratio,
                "latency_ratio": self.latency_ratio}


def deployment(rule: str, chosen: Any, best: Any, report_rows: Sequence[Any],
               unstable: tuple[int, ...] = ()) -> Deployment:
    """A :class:`Deployment` for the selection rows ``chosen`` and ``best``, with the reported
    split's figures at both geometries looked up in ``report_rows``."""
    at = {(r.test_res, r.crop_pct): r for r in report_rows}
    rep, rep_best = at.get((chosen.test_res, chosen.crop_pct)), at.get((best.test_res, best.crop_pct))
    split = report_rows[0].split if report_rows else ""
    return Deployment(rule, chosen.test_res, chosen.crop_pct, chosen.split, chosen.top1, best.test_res, best.crop_pct,
                      best.top1, split, rep and rep.top1, rep_best and rep_best.top1, chosen.gflops, best.gflops,
                      chosen.latency_ms, best.latency_ms, unstable)


def unstable_timings(rows: Sequence[Any]) -> tuple[int, ...]:
    """The resolutions of ``rows`` whose timings are known to be unstable."""
    return tuple(sorted({r.test_res for r in rows if getattr(r, "timing_stable", None) is False}))


def deployments(selection_rows: Sequence[Any], report_rows: Sequence[Any], *, within: float | None = None,
                budget_ms: float | None = None, budget_gflops: float | None = None) -> tuple[Deployment, ...]:
    """The choices asked for: one for ``within``, one for the budget (both limits together)."""
    if not selection_rows:
        return ()
    best = choose_best(selection_rows)
    out = []
    if within is not None:
        out.append(deployment(f"within {within:g} pt of the best", within_best(selection_rows, within), best,
                              report_rows))
    limits = _limits(budget_ms, budget_gflops)
    if limits:
        rule = "most accurate under " + " and ".join(f"{v:g} {BUDGETS[f][1]}" for f, v in limits.items())
        out.append(deployment(rule, under_budget(selection_rows, ms=budget_ms, gflops=budget_gflops), best,
                              report_rows, unstable_timings(selection_rows) if budget_ms is not None else ()))
    return tuple(out)
