"""The demo end to end at toy size: synthesise, train, tune; the report is written and consistent."""
import json

import pytest

from fixres.cli import main
from fixres.experiments.demo import DemoConfig, run_demo
from fixres.experiments.tune_report import tune_rows, tune_table
from fixres.models.ladder import Ladder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    cfg = DemoConfig(out=str(tmp_path_factory.mktemp("demo") / "d"), classes=3, train_per_class=24, val_per_class=6,
                     epochs=1, batch_size=16, test_res=(32, 48, 64), rungs=2, adapt_images=48, adapt_epochs=2,
                     holdout=0.1, workers=0)
    return cfg, run_demo(cfg, quiet=True)


def test_every_stage_ran_and_the_report_is_written(demo):
    cfg, summary = demo
    out = summary["report"]
    html = open(out["html"]).read()
    assert out["html"] == f"{cfg.out}/report.html"
    assert html.count("data:image/png;base64,") == 3      # self-contained: every figure embedded
    stored = json.loads(open(f"{cfg.out}/demo.json").read())
    assert stored["status"] == "done"
    assert set(stored["timings"]) == {"synthesise", "train", "predict", "sweep", "ladder", "ladder_sweep", "export"}
    assert stored["sweep"]["chosen"]["split"] == "holdout"   # never chosen on val
    rungs = stored["rungs"]["test_res"]
    assert Ladder.open(f"{cfg.out}/tune/ladder").resolutions == rungs
    assert Ladder.open(f"{cfg.out}/tune/ladder-bn").resolutions == rungs
    choice = next(c for c in stored["deployments"] if c["rung"] is not None)
    sentence = f"deploy rung {choice['rung']}px: "
    assert sentence in html and sentence in open(out["markdown"]).read()
    assert "of the best accuracy on the held-out training images" in html
    assert f"Trained {cfg.model} at {cfg.train_res}px" in html


def test_table_rows_match_the_measurements(demo):
    _, summary = demo
    rows = tune_rows(summary)
    val = {r["test_res"]: r["top1"] for r in summary["sweep"]["rows"]}
    assert all(r["val"] == val[r["test_res"]] for r in rows if r["test_res"] in val)
    fixres = {r["test_res"]: r["after"]["top1"] for r in summary["ladders"]["fixres"]["rungs"]}
    for r in rows:
        assert r["fixres"] == fixres.get(r["test_res"])
    for rung in summary["ladders"]["fixres"]["rungs"]:   # 'before' of each rung: the same model, the same images
        if rung["test_res"] in val:
            assert rung["before"]["top1"] == val[rung["test_res"]]
    text = tune_table(summary)
    assert "train" in text and "best on holdout" in text and "rung" in text
    # The robustness columns: the ladder's and the unadapted model's mean top-1 under the demo's corruptions.
    base, ladder = summary["ladder_sweep"]["checkpoints"]
    assert {r["corruption"] for r in ladder["corrupted_rows"]} == set(DemoConfig().corrupt)
    adapted = {r["test_res"]: r["top1"] for r in ladder["corrupted_mean_rows"]}
    plain = {r["test_res"]: r["top1"] for r in base["corrupted_mean_rows"]}
    assert set(adapted) == set(summary["rungs"]["test_res"]) == set(plain)
    for r in rows:
        assert r.get("fixres corrupted") == adapted.get(r["test_res"]) and r.get("corrupted") == plain.get(r["test_res"])
    assert "FixRes corrupted" in text and "Under corruption (impulse_noise:3" in open(summary["report"]["html"]).read()


def test_demo_refuses_an_existing_directory(demo, capsys):
    cfg, _ = demo
    assert main(["demo", "--out", cfg.out]) == 2
    assert "already exists" in capsys.readouterr().err
