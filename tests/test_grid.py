"""``fixres grid``: the CI-size grid on the embedded dataset (both tables, the cost table, all
files), continuing an interrupted grid without recomputing finished cells, refusing another
grid's directory, and one-line config errors."""
import csv
import json
from pathlib import Path

import pytest

import fixres.experiments.grid.run as grid_run
from fixres.cli import main
from fixres.core.errors import FixresError
from fixres.experiments.grid import (
    GRID_FILES,
    GridConfig,
    config_dict,
    load_config,
    run_grid,
)

CI = Path(__file__).resolve().parents[1] / "configs" / "embedded-grid-ci.yaml"
FAST = ["--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The CI grid of configs/embedded-grid-ci.yaml: 2 train x 3 test resolutions, test_resnet, 1 epoch."""
    out = tmp_path_factory.mktemp("grid") / "g"
    assert main(["grid", "--config", str(CI), "--out", str(out), *FAST]) == 0
    return out


def load(out: Path) -> dict:
    return json.loads((out / "grid.json").read_text())


def test_grid_writes_both_tables_and_the_cost_table(grid):
    for name in GRID_FILES:
        assert (grid / name).is_file(), name
    report = load(grid)
    rows = report["rows"]
    assert len(rows) == 2 * 3 * 2          # (train res x test res) x (without, with adaptation)
    for r in (32, 48):
        for adapted in (False, True):
            row = [x for x in rows if x["train_res"] == r and (x["adaptation"] != "none") == adapted]
            assert sorted(x["test_res"] for x in row) == [32, 48, 64]
            assert sum(x["best_in_row"] for x in row) == 1
            best = next(x for x in row if x["best_in_row"])
            assert best["top1"] == max(x["top1"] for x in row)
            assert all(x["n"] == 4 * 12 for x in row)          # every val image, every cell
    assert {x["adaptation"] for x in rows} == {"none", "fixres"}
    md = (grid / "grid.md").read_text()
    for heading in ("## Top-1 without adaptation", "## Top-1 after adaptation", "## Cost per training resolution",
                    "## GFLOPs per image"):
        assert heading in md
    with open(grid / "grid.csv") as f:
        assert len(list(csv.DictReader(f))) == 12


def test_cost_table(grid):
    costs = {c["train_res"]: c for c in load(grid)["costs"]}
    for c in costs.values():
        assert c["train_seconds"] > 0 and c["train_images_per_s"] > 0 and c["peak_memory_mb"] > 0
        assert c["sweep_seconds"] > 0 and c["adapt_seconds"] > 0 and c["status"] == "trained"
    # convolutions dominate: FLOPs grow with the square of the resolution
    assert costs[48]["gflops_train_res"] / costs[32]["gflops_train_res"] == pytest.approx((48 / 32) ** 2, rel=0.1)
    with open(grid / "costs.csv") as f:
        assert [int(r["train_res"]) for r in csv.DictReader(f)] == [32, 48]


def row_at(rows: list[dict], train_res: int, test_res: int, adaptation: str) -> dict:
    return next(x for x in rows if (x["train_res"], x["test_res"], x["adaptation"]) == (train_res, test_res, adaptation))


def test_tables_agree_with_the_cells(grid):
    """The sweep is the 'without' table; the adaptation's own 'before' is the same measurement."""
    rows = load(grid)["rows"]
    for r in (32, 48):
        sweep = json.loads((grid / "cells" / f"sweep-{r}.json").read_text())
        for k in (32, 48, 64):
            plain = row_at(rows, r, k, "none")
            assert plain["top1"] == next(s["top1"] for s in sweep["rows"] if s["test_res"] == k)
            cell = json.loads((grid / "cells" / f"adapt-{r}-{k}.json").read_text())
            assert cell["before"]["top1"] == plain["top1"]
            assert row_at(rows, r, k, "fixres")["top1"] == cell["after"]["top1"]


class Spy:
    """Wraps a function of fixres.experiments.grid.run, counting calls (and optionally failing at call N)."""

    def __init__(self, monkeypatch, name, fail_at=None):
        self.real, self.calls, self.fail_at = getattr(grid_run, name), [], fail_at
        monkeypatch.setattr(grid_run, name, self)

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise KeyboardInterrupt
        return self.real(*args, **kwargs)


def test_an_interrupted_grid_continues_without_recomputing(grid, tmp_path, monkeypatch):
    cfg = load_config(GridConfig, CI, {"out": str(tmp_path / "g"), "workers": 0})
    with monkeypatch.context() as m:
        Spy(m, "adapt_checkpoint", fail_at=5)         # interrupted during the second row's second adaptation
        with pytest.raises(KeyboardInterrupt):
            run_grid(cfg, quiet=True)
    done = sorted(p.name for p in (tmp_path / "g" / "cells").glob("*.json"))
    assert done == ["adapt-32-32.json", "adapt-32-48.json", "adapt-32-64.json", "adapt-48-32.json",
                    "sweep-32.json", "sweep-48.json", "train-32.json", "train-48.json"]
    fit, sweep, adapt = Spy(monkeypatch, "fit"), Spy(monkeypatch, "sweep_checkpoint"), Spy(monkeypatch, "adapt_checkpoint")
    report = run_grid(cfg, quiet=True)
    assert (len(fit.calls), len(sweep.calls)) == (0, 0)
    assert [kw["before"].test_res for _, kw in adapt.calls] == [48, 64]    # only the missing cells
    # interrupted + continued == uninterrupted (CPU, fixed seeds)
    strip = lambda rows: [{k: v for k, v in x.items() if k != "seconds"} for x in rows]  # noqa: E731
    assert strip(report.rows) == strip(load(grid)["rows"])

    # an interrupted training run (no summary, no cell) is continued from its checkpoint
    (tmp_path / "g" / "cells" / "train-48.json").unlink()
    (tmp_path / "g" / "train-48" / "summary.json").unlink()
    run_grid(cfg, quiet=True)
    assert [kw.get("resume") for _, kw in fit.calls] == [True]
    assert fit.calls[0][0][0].train_res == 48
    assert len(sweep.calls) == 0 and len(adapt.calls) == 2


def test_a_directory_of_another_grid_is_refused_naming_the_difference(grid, capsys):
    code = main(["grid", "--config", str(CI), "--out", str(grid), "--set", "train.epochs=2", "--train-res", "32",
                 *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "train.epochs (1 -> 2)" in err and "train_res ([32, 48] -> [32])" in err
    # settings that do not change results may differ
    assert main(["grid", "--config", str(CI), "--out", str(grid), "--keep-adapted", *FAST]) == 0


def test_a_foreign_directory_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("not a grid")
    with pytest.raises(FixresError, match="holds no grid.yaml"):
        run_grid(load_config(GridConfig, CI, {"out": str(tmp_path)}), quiet=True)


def write(tmp_path, text: str) -> str:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, message", [
    ("train_resolution: [32]\n", "unknown setting 'train_resolution'"),
    ("train:\n  epoch: 3\n", "train: unknown setting 'epoch'"),
    ("adapt:\n  method: magic\n", "'magic' is not one of"),
    ("test_res: []\n", "test_res is empty"),
    ("train_res: [500]\n", "train_res 500 is larger than every image of the embedded dataset"),
    ("adapt_res: [96]\n", "adapt_res 96 is not one of test_res"),
    ("train:\n  model: resnet50\n", "train.model is set by the command itself"),
    ("command: transfer\n", "is a config for `fixres transfer`"),
    ("test_res: '64:32:8'\n", "needs START <= END"),
    ("select_on: holdout\n", "set train.holdout"),
    ("expected:\n  - {train_res: 32, test_res: 96, adapted: false, top1: 50, source: x}\n", "not in the grid"),
])
def test_config_errors_are_one_line_with_exit_code_2(tmp_path, capsys, text, message):
    code = main(["grid", "--config", write(tmp_path, text), "--out", str(tmp_path / "out"), *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert message in err
    assert not (tmp_path / "out").exists()            # refused before anything was written


def test_a_train_resolution_larger_than_every_image(colour_data, tmp_path, capsys):
    """The colour fixture's images are 40-95 px: training at 128 would only upsample."""
    code = main(["grid", "--data", str(colour_data), "--train-res", "32", "128", "--out", str(tmp_path / "o"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "train_res 128 is larger than every image" in err


def test_set_flags(tmp_path, capsys):
    assert main(["grid", "--set", "epochs=2", "--out", str(tmp_path / "o"), *FAST]) == 2
    assert "expected train.KEY=VALUE" in capsys.readouterr().err
    cfg = load_config(GridConfig, CI, sets={"train": {"epochs": 3}})
    assert cfg.train == {"epochs": 3, "batch_size": 24}       # merged into the file's section


def test_ranges_and_defaults():
    cfg = load_config(GridConfig, None, {"test_res": ["32:64:16", "96"], "adapt_res": ["none"]})
    assert cfg.test_res == (32, 48, 64, 96) and cfg.adapted_at == ()
    default, ci = config_dict(load_config(GridConfig)), config_dict(load_config(GridConfig, CI))
    assert {k: v for k, v in default.items() if k not in ("out", "description")} == \
        {k: v for k, v in ci.items() if k not in ("out", "description")}     # `fixres grid` alone = the CI grid
