"""Every config in configs/ loads and validates, and the paper runs carry the paper's settings,
its numbers and a cost whose arithmetic holds."""
from pathlib import Path

import pytest

from fixres.experiments.grid import GridConfig
from fixres.experiments.grid.config import adapt_options
from fixres.experiments.transfer import TransferConfig, load_experiment
from fixres.measure.costs import expected_hours

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
IMAGENET_TRAIN = 1_281_167
PAPER_RUNS = {"imagenet-resnet50-train128-adapt224", "imagenet-resnet50-train224-adapt384",
              "imagenet-resnext101_32x48d-adapt320", "transfer-cub200-resnet50"}


def test_the_paper_runs_have_configs():
    assert PAPER_RUNS | {"embedded-grid", "embedded-grid-ci"} <= {p.stem for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_loads_and_validates(path):
    cfg = load_experiment(path)
    assert cfg.description
    if isinstance(cfg, GridConfig):
        for r in cfg.train_res:          # what each run and each adaptation will be given
            assert cfg.train_config(r).train_res == r
        for k in cfg.adapted_at:
            assert adapt_options(cfg.adapt, k).test_res == k
    else:
        assert isinstance(cfg, TransferConfig)
        assert cfg.pretrained or cfg.weights
        assert cfg.train_res in cfg.sweep_res
    for cost in cfg.expected_cost:        # the stated computation: hours = images / (img/s) / 3600
        assert cost.hours == pytest.approx(expected_hours(cost.images, cost.images_per_s), abs=0.01)


@pytest.mark.parametrize("name, train_res, adapt_res, published", [
    ("imagenet-resnet50-train128-adapt224", 128, 224, 77.1),
    ("imagenet-resnet50-train224-adapt384", 224, 384, 79.0),
])
def test_resnet50_runs_follow_the_paper(name, train_res, adapt_res, published):
    cfg = load_experiment(next(p for p in CONFIGS if p.stem == name))
    assert cfg.model == "resnet50" and cfg.train_res == (train_res,) and cfg.adapted_at == (adapt_res,)
    train = cfg.train_config(train_res)
    assert (train.epochs, train.batch_size, train.lr, train.weight_decay) == (120, 512, 0.16, 1e-4)
    assert (train.schedule, train.step_epochs, train.color_jitter, train.crop_pct) == ("step", 30, 0.3, 0.875)
    adapt = adapt_options(cfg.adapt, adapt_res)
    assert (adapt.method, adapt.epochs, adapt.aug) == ("fixres", 56, "v1")
    assert adapt.base_lr == pytest.approx(1e-3 * adapt.batch_size / 64)       # 1e-3 per 64 images
    assert any(e.adapted and e.test_res == adapt_res and e.top1 == published for e in cfg.expected)
    trains = [c for c in cfg.expected_cost if c.stage.startswith("train")]
    assert trains and all(c.images == train.epochs * IMAGENET_TRAIN for c in trains)
    adapts = [c for c in cfg.expected_cost if c.stage.startswith("adapt")]
    assert adapts and all(c.images == adapt.epochs * IMAGENET_TRAIN for c in adapts)


def test_resnext_run_follows_the_paper():
    cfg = load_experiment(next(p for p in CONFIGS if p.stem == "imagenet-resnext101_32x48d-adapt320"))
    assert cfg.model == "resnext101_32x48d.fb_wsl_ig1b_ft_in1k" and not cfg.finetune
    adapt = adapt_options(cfg.adapt, cfg.adapt_res)
    assert (adapt.test_res, adapt.epochs, adapt.base_lr) == (320, 1, pytest.approx(1e-3 * adapt.batch_size / 64))
    assert [e.top1 for e in cfg.expected] == [86.3]
    assert next(c for c in cfg.expected_cost if c.stage.startswith("adapt")).images == IMAGENET_TRAIN
