"""Cost beside accuracy, without a dataset: the deployment choices are pure functions of rows,
the timing's plumbing (warm-up, repeats, synchronisation, eval mode, no autograd, median and
IQR), and the cost figure's series and markers. No wall-clock threshold is asserted."""
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from fixres.core.errors import FixresError
from fixres.core.plots import cost_figure
from fixres.core.runtime import Runtime
from fixres.measure.choose import (
    deployments,
    fits_budget,
    pareto_front,
    under_budget,
    within_best,
)
from fixres.measure.sweep_report import deployment_sentence
from fixres.measure.timing import (
    BATCH_MIN_REPEATS,
    BATCH_WARMUP,
    MIN_REPEATS,
    WARMUP,
    median_iqr,
    repeat_timed,
    time_model,
)


@dataclass(frozen=True)
class Row:
    test_res: int
    top1: float
    gflops: float
    latency_ms: float | None = None
    crop_pct: float = 0.875
    loss: float = 1.0
    split: str = "holdout"
    timing_stable: bool | None = None


# Selection-split rows: accuracy peaks at 96 px; cost grows with the resolution.
HELD = [Row(48, 70.0, 0.2, 1.0), Row(64, 88.0, 0.36, 1.5), Row(80, 93.5, 0.56, 2.1), Row(96, 94.0, 0.8, 3.0),
        Row(112, 92.0, 1.1, 4.2)]
# The reported split (val) disagrees on purpose: a choice made on it would differ.
VAL = [Row(r.test_res, t, r.gflops, r.latency_ms, split="val") for r, t in zip(HELD, (71.0, 87.0, 90.0, 95.0, 97.0))]


@pytest.mark.parametrize("points, res", [(0, 96), (0.5, 80), (6, 64), (24, 48), (1000, 48)])
def test_within_is_the_smallest_resolution_near_the_best(points, res):
    assert within_best(HELD, points).test_res == res


def test_within_breaks_ties_at_one_resolution_by_accuracy_and_refuses_negative():
    rows = [Row(64, 90.0, 0.4, crop_pct=1.0), Row(64, 91.0, 0.4), Row(80, 91.5, 0.6)]
    assert (within_best(rows, 1).test_res, within_best(rows, 1).crop_pct) == (64, 0.875)
    with pytest.raises(FixresError, match="must not be negative"):
        within_best(rows, -0.1)


@pytest.mark.parametrize("ms, gflops, res", [(None, 0.6, 80), (None, 5, 96), (1.6, None, 64), (2.5, 0.5, 64),
                                             (None, 0.36, 64)])
def test_budget_gives_the_most_accurate_resolution_that_fits(ms, gflops, res):
    assert under_budget(HELD, ms=ms, gflops=gflops).test_res == res


def test_a_budget_below_the_cheapest_names_it():
    with pytest.raises(FixresError, match=r"--budget-gflops 0.1 is below the cheapest resolution: 48px at 0.2 GFLOPs"):
        under_budget(HELD, gflops=0.1)
    with pytest.raises(FixresError, match=r"--budget-ms 0.5 is below the cheapest resolution: 48px at 1 ms"):
        under_budget(HELD, ms=0.5)
    with pytest.raises(FixresError, match="drop --no-timing"):
        fits_budget([Row(48, 1.0, 0.2)], ms=1.0)


def test_choices_are_made_on_the_selection_rows_and_reported_on_the_others():
    near, cheap = deployments(HELD, VAL, within=0.5, budget_gflops=0.6)
    assert (near.test_res, cheap.test_res) == (80, 80)             # on val, the best would be 112
    assert (near.best_test_res, near.best_selection_top1, near.selection_top1) == (96, 94.0, 93.5)
    assert (near.top1, near.best_top1, near.report_split, near.chosen_on) == (90.0, 95.0, "val", "holdout")
    # the accuracy ratio on ONE set of images, the one both were chosen on
    assert near.accuracy_ratio == pytest.approx(93.5 / 94) and near.gflops_ratio == pytest.approx(0.56 / 0.8)
    assert near.latency_ratio == pytest.approx(2.1 / 3.0) and near.rule == "within 0.5 pt of the best"
    assert cheap.rule == "most accurate under 0.6 GFLOPs"
    assert deployments(HELD, VAL) == () and deployments((), VAL, within=1) == ()
    assert deployment_sentence(near.row()).startswith(
        "deploy at 80px: 99.5% of the best accuracy on the held-out training images at 70% of its cost")


def test_a_deployment_never_beats_the_best_on_the_images_it_is_compared_on():
    """Chosen on held-out images, reported on val: val at the deployed 112 px (97) is above val at
    the held-out best 96 px (95). Dividing one by the other said "102% of the best"."""
    (cheap,) = deployments(HELD, VAL, budget_gflops=5)
    assert cheap.test_res == 96 and cheap.accuracy_ratio == 1.0
    (near,) = deployments(HELD, VAL, within=2)
    assert near.test_res == 80 and near.top1 / near.best_top1 < near.accuracy_ratio <= 1
    rows = [Row(r.test_res, t, r.gflops, r.latency_ms) for r, t in zip(HELD, (70.0, 88.0, 95.0, 94.0, 92.0))]
    for d in deployments(HELD, rows, within=1) + deployments(HELD, rows, budget_ms=2.5):
        assert d.top1 > d.best_top1 and d.accuracy_ratio <= 1       # the case that printed "101%"


def test_a_latency_budget_over_unstable_timings_says_so():
    shaky = [Row(r.test_res, r.top1, r.gflops, r.latency_ms, timing_stable=r.test_res != 80) for r in HELD]
    (by_ms,) = deployments(shaky, VAL, budget_ms=2.5)
    assert by_ms.unstable_timings == (80,)
    assert "timings unstable at 80px" in deployment_sentence(by_ms.row())
    (by_flops,) = deployments(shaky, VAL, budget_gflops=0.6)       # GFLOPs do not depend on the machine
    assert by_flops.unstable_timings == () and "unstable" not in deployment_sentence(by_flops.row())


@pytest.mark.parametrize("points, front", [
    ([(1, 50), (2, 60), (3, 55), (4, 70)], [0, 1, 3]),
    ([(3, 55), (1, 50), (2, 50), (4, 70)], [1, 0, 3]),       # equal accuracy at a higher cost is beaten
    ([(1, 50), (1, 60)], [1]),                               # equal cost: the more accurate
    ([], []),
])
def test_pareto_front(points, front):
    assert pareto_front(points) == front


# ----------------------------------------------------------------------------- timing plumbing
def test_repeats_are_warmed_up_synchronised_and_bounded():
    events = []
    times = repeat_timed(lambda: events.append("call"), lambda: events.append("sync"), budget_s=0, min_repeats=4)
    assert len(times) == 4 and all(t >= 0 for t in times)
    assert events[:WARMUP + 1] == ["call"] * WARMUP + ["sync"]
    assert events[WARMUP + 1:] == ["sync", "call", "sync"] * 4     # every timed call between two synchronisations
    capped = repeat_timed(lambda: None, lambda: None, budget_s=1e9, min_repeats=2, max_repeats=7)
    assert len(capped) == 7
    with pytest.raises(FixresError):
        repeat_timed(lambda: None, lambda: None, budget_s=0, min_repeats=0)


def test_an_unstable_measure_is_repeated_past_its_budget_until_stable_or_capped(monkeypatch):
    """After the budget, repeats go on while the IQR exceeds 25% of the median (a busy machine),
    up to STABILITY_BUDGET x the budget; stable times stop at the budget."""
    import fixres.measure.timing as timing
    durations = iter([0.01, 0.09] * 6 + [0.01] * 200)    # alternating: unstable; then a quiet machine
    clock = {"t": 0.0, "reads": 0}

    def perf_counter():                                   # every second read ends a timed call
        clock["reads"] += 1
        if clock["reads"] % 2 == 0:
            clock["t"] += next(durations)
        return clock["t"]
    monkeypatch.setattr(timing.time, "perf_counter", perf_counter)
    times = repeat_timed(lambda: None, lambda: None, budget_s=0.2, min_repeats=3, warmup=0)
    assert 0.2 < sum(times) <= timing.STABILITY_BUDGET * 0.2 + 0.09
    assert len(times) > 12 and timing.is_stable(*median_iqr(times))   # on until the quiet repeats dominate
    shaky = iter([0.01, 0.09] * 1000)
    durations = shaky
    times = repeat_timed(lambda: None, lambda: None, budget_s=0.2, min_repeats=3, warmup=0)
    assert not timing.is_stable(*median_iqr(times))       # never stable: stops at the stability budget
    assert timing.STABILITY_BUDGET * 0.2 <= sum(times) <= timing.STABILITY_BUDGET * 0.2 + 0.09


def test_median_and_iqr():
    assert median_iqr([1, 2, 3, 4, 5]) == (3.0, 2.0)
    assert median_iqr([10, 10, 10]) == (10.0, 0.0)


class Probe(nn.Module):
    """Records the state a timed forward pass runs in."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.seen = []

    def forward(self, x):
        self.seen.append((x.shape[0], x.shape[-1], self.training, torch.is_grad_enabled(), x.device.type))
        return self.conv(x).mean((2, 3))


def test_time_model_runs_in_eval_mode_without_gradients_on_synthetic_input():
    model = Probe().train()
    t = time_model(model, 20, Runtime(), batch_size=4, budget_s=0)
    assert model.training                                         # left as it was
    assert {s[2:] for s in model.seen} == {(False, False, "cpu")}     # eval, no autograd, on the device
    assert sum(s[0] == 4 for s in model.seen) == BATCH_WARMUP + BATCH_MIN_REPEATS == BATCH_WARMUP + t.batch_repeats
    assert sum(s[0] == 1 for s in model.seen) == WARMUP + MIN_REPEATS == WARMUP + t.latency_repeats
    assert [s[0] for s in model.seen][:WARMUP + MIN_REPEATS] == [1] * (WARMUP + MIN_REPEATS)   # single images first
    assert {s[1] for s in model.seen} == {20}
    assert t.batch_size == 4 and t.images_per_s > 0 and t.latency_ms > 0 and t.images_per_s_iqr >= 0
    assert t.device == f"cpu ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})"
    assert t.dtype == "float32"


# ----------------------------------------------------------------------------- the figure
def _dicts(rows, **extra):
    return [{"test_res": r.test_res, "crop_pct": r.crop_pct, "top1": r.top1, "gflops": r.gflops,
             "latency_ms": r.latency_ms, "split": "val", **extra} for r in rows]


def test_cost_figure_draws_points_front_and_markers():
    adapted = [Row(r.test_res, r.top1 + 2, r.gflops, r.latency_ms + 0.1) for r in VAL]
    fig = cost_figure({"not adapted": _dicts(VAL), "fixres at 96px": _dicts(adapted)}, train_res=48,
                      best={"not adapted": (96, 0.875), "fixres at 96px": (112, 0.875)},
                      deploy={"not adapted": [(80, 0.875, "within 0.5 pt of the best")]})
    flops_ax, ms_ax = fig.axes
    lines = {line.get_label(): line for line in flops_ax.lines}
    assert lines["not adapted"].get_xydata().tolist() == [[r.gflops, r.top1] for r in VAL]
    assert lines["fixres at 96px"].get_xydata().tolist() == [[r.gflops, r.top1] for r in adapted]
    assert lines["train 48px"].get_xydata().tolist() == [[0.2, 71.0]]                   # on the first curve only
    assert lines["best 96px (not adapted)"].get_xydata().tolist() == [[0.8, 95.0]]
    assert lines["best 112px (fixres at 96px)"].get_xydata().tolist() == [[1.1, 99.0]]
    assert lines["deploy 80px: within 0.5 pt of the best (not adapted)"].get_xydata().tolist() == [[0.56, 90.0]]
    # The front of all the points: every adapted point beats the plain one at the same cost.
    assert lines["Pareto front"].get_xydata().tolist() == [[r.gflops, r.top1] for r in adapted]
    ms = {line.get_label(): line for line in ms_ax.lines}
    assert ms["not adapted"].get_xydata().tolist() == [[r.latency_ms, r.top1] for r in VAL]
    assert "GFLOPs" in flops_ax.get_xlabel() and "ms" in ms_ax.get_xlabel()


def test_cost_figure_without_timing_has_one_panel_and_a_single_curve_is_named_by_its_split():
    untimed = [Row(r.test_res, r.top1, r.gflops) for r in VAL]
    fig = cost_figure({"": _dicts(untimed)}, train_res=48, best={"": (112, 0.875)})
    assert len(fig.axes) == 1
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert labels == ["val", "train 48px", "best 112px", "Pareto front"]
    with pytest.raises(ValueError):
        cost_figure({"": []})
