"""``fixres demo``: the whole FixRes story on the embedded dataset, in minutes on a CPU.

synthesise -> train at a LOW resolution (holding out a few training images) -> ``fixres tune``
on the run: predict the test resolution from the augmentation geometry, sweep test resolutions
(choosing on the held-out images), build a ladder of adapted resolutions (FixRes, and the
label-free batch-norm statistics beside it), sweep it, export it, and report (HTML + Markdown +
PNGs, and a table on the terminal) with the rung to deploy for each budget.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.progress import Progress
from ..core.rundir import prepare_run_dir, write_json
from ..data.corruptions import available as corruptions_available
from ..data.synth import synthesize
from ..train.config import TrainConfig
from ..train.loop import fit
from .tune import TuneOptions, run_tune
from .tune_report import copy_figure, write_tune_report


@dataclass(frozen=True)
class DemoConfig:
    out: str = "fixres-demo"
    seed: int = 0
    classes: int = 10
    train_per_class: int = 400
    val_per_class: int = 100
    model: str = "resnet10t"
    train_res: int = 48
    holdout: float = 0.05            # training images kept out of training, to choose the test resolution
    test_res: tuple[int, ...] = (32, 40, 48, 56, 64, 72, 80, 88, 96, 112, 128)
    rungs: int = 4                   # the ladder's rungs: at most this many, from the Pareto front (fixres tune)
    rung_res: tuple[int, ...] | None = None   # or these resolutions
    epochs: int = 7
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 5e-5
    adapt_images: int = 1000         # training images the adaptation learns from (METHOD.md section 7 used 1,000)
    adapt_epochs: int = 30
    adapt_lr: float = 0.01           # 1e-3 x batch/64 (the paper's) under-trains a freshly trained head at this scale
    # The report's robustness columns: three cheap ImageNet-C corruptions (noise, blur, digital) at
    # severity 3 on the ladder's rungs, when fixres[robustness] is installed (said when it is not).
    corrupt: tuple[str, ...] = ("impulse_noise:3", "defocus_blur:3", "contrast:3")
    device: str = "auto"
    workers: int | None = None


def demo_train_config(cfg: DemoConfig, data: Path, run: Path) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(run), model=cfg.model, train_res=cfg.train_res, test_res=cfg.train_res,
                       holdout=cfg.holdout, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, nesterov=True,
                       weight_decay=cfg.weight_decay, warmup_epochs=0.5, eval_every=cfg.epochs, seed=cfg.seed,
                       device=cfg.device, workers=cfg.workers)


def demo_tune_options(cfg: DemoConfig) -> TuneOptions:
    return TuneOptions(sweep_res=cfg.test_res, rungs=cfg.rungs, rung_res=cfg.rung_res, compare=("bn",), epochs=cfg.adapt_epochs,
                       lr=cfg.adapt_lr, images=cfg.adapt_images, seed=cfg.seed, device=cfg.device,
                       workers=cfg.workers, batch_size=cfg.batch_size, onnx=False,
                       corrupt=cfg.corrupt if cfg.corrupt and corruptions_available() else None)


def run_demo(cfg: DemoConfig, *, overwrite: bool = False, quiet: bool = False) -> dict:
    """Run every stage into ``cfg.out`` and return the summary (also written as demo.json)."""
    out = prepare_run_dir(cfg.out, overwrite=overwrite, marker="demo.json", what="demo directory")
    write_json(out / "demo.json", {"config": dataclasses.asdict(cfg), "status": "running"})
    say = (lambda text: None) if quiet else Progress.write
    t0 = time.perf_counter()
    say(f"[demo 1/3] synthesising {cfg.classes} classes x ({cfg.train_per_class} train + {cfg.val_per_class} val) "
        "images")
    data = synthesize(out / "data", classes=cfg.classes, train_per_class=cfg.train_per_class,
                      val_per_class=cfg.val_per_class, seed=cfg.seed, progress=not quiet).root
    timings = {"synthesise": round(time.perf_counter() - t0, 1)}
    t0 = time.perf_counter()
    say(f"[demo 2/3] training {cfg.model} at {cfg.train_res}px for {cfg.epochs} epochs "
        f"({cfg.holdout:.0%} of the training images held out)")
    trained = fit(demo_train_config(cfg, data, out / "run"), quiet=quiet)
    timings["train"] = round(time.perf_counter() - t0, 1)
    say("[demo 3/3] fixres tune: predict, sweep, a ladder of adapted resolutions (FixRes, and label-free batch-norm "
        "statistics beside it), export, report")
    if cfg.corrupt and not corruptions_available():
        say("  (no robustness columns: the corruption functions are not installed; pip install 'fixres[robustness]')")
    tuned = run_tune(trained.run_dir, data, demo_tune_options(cfg), out / "tune", quiet=quiet,
                     extra={"train": trained.summary})
    summary = {**tuned.summary, "config": dataclasses.asdict(cfg), "status": "done",
               "timings": {**timings, **tuned.summary["timings"]}}
    copy_figure(out / "tune" / "apparent_size.png", out / "apparent_size.png")
    summary["report"] = {k: str(v) for k, v in write_tune_report(out, summary).items()}
    write_json(out / "demo.json", summary)
    return summary
