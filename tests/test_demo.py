"""The demo end to end at toy size: every stage runs, the report is written and consistent."""
import json

import pytest

from fixres.cli import main
from fixres.experiments.demo import DemoConfig, run_demo
from fixres.experiments.report import demo_rows, demo_table

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    cfg = DemoConfig(out=str(tmp_path_factory.mktemp("demo") / "d"), classes=3, train_per_class=24, val_per_class=6,
                     epochs=1, batch_size=16, test_res=(32, 48, 64), adapt_res=(48, 64), adapt_images=48,
                     adapt_epochs=2, holdout=0.1, workers=0)
    return cfg, run_demo(cfg, quiet=True)


def test_every_stage_ran_and_the_report_is_written(demo):
    cfg, summary = demo
    out = summary["report"]
    for key in ("html", "markdown", "plot"):
        assert json.loads(json.dumps(out))[key]
    html = open(out["html"]).read()
    assert html.count("data:image/png;base64,") == 3      # self-contained: every figure embedded
    stored = json.loads(open(f"{cfg.out}/demo.json").read())
    assert stored["status"] == "done" and set(stored["timings"]) == {"synthesise", "train", "analyze_sweep", "adapt"}
    assert stored["sweep"]["chosen"]["split"] == "holdout"   # never chosen on val
    assert [r["test_res"] for r in stored["adapted"]["fixres"]] == [48, 64]
    deploy = stored["sweep"]["deployments"][0]           # the resolution to deploy, chosen like the best
    assert deploy["chosen_on"] == "holdout" and deploy["rule"] == "within 1 pt of the best"
    sentence = f"deploy at {deploy['test_res']}px: "
    assert sentence in html and sentence in open(out["markdown"]).read()
    assert "of the best accuracy on the held-out training images at" in html and "% of its cost" in html


def test_table_rows_match_the_measurements(demo):
    _, summary = demo
    rows = demo_rows(summary)
    assert [r["test_res"] for r in rows] == [32, 48, 64]
    val = {r["test_res"]: r["top1"] for r in summary["sweep"]["rows"]}
    assert all(r["val"] == val[r["test_res"]] for r in rows)
    fixres = {r["test_res"]: r["top1"] for r in summary["adapted"]["fixres"]}
    assert rows[2]["fixres"] == fixres[64] and rows[0]["fixres"] is None
    for r in summary["adapted"]["fixres"]:   # 'before' reused from the sweep, not measured twice
        assert r["before_top1"] == val[r["test_res"]]
    text = demo_table(summary)
    assert "train" in text and "chosen on holdout" in text


def test_demo_refuses_an_existing_directory(demo, capsys):
    cfg, _ = demo
    assert main(["demo", "--out", cfg.out]) == 2
    assert "already exists" in capsys.readouterr().err
