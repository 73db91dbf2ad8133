"""``fixres demo``: the whole FixRes story on the embedded dataset, in minutes on a CPU.

synthesise -> train at a LOW resolution (holding out a few training images) -> predict
the test resolution from the augmentation geometry -> sweep test resolutions (choosing
on the held-out images) -> adapt at several test resolutions (``fixres`` and ``bn``)
-> report (HTML + Markdown + PNGs, and a table on the terminal). The sweep also measures
what each resolution costs and picks the one to deploy (the smallest within
``deploy_within`` points of the best on the held-out images).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from ..adapt import AdaptOptions, adapt_checkpoint
from ..analyze import image_sizes, plot_apparent_size
from ..core.progress import Progress
from ..core.rundir import prepare_run_dir, write_json
from ..data.folder import scan_split
from ..data.synth import synthesize
from ..measure.infer import EvalResult
from ..measure.sweep import SweepOptions, sweep_checkpoint
from ..measure.sweep_report import sweep_json
from ..train.config import TrainConfig
from ..train.loop import fit
from .report import write_demo_report


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
    adapt_res: tuple[int, ...] = (64, 80, 96, 112, 128)
    deploy_within: float = 1.0       # deploy the smallest resolution this many points below the best (held-out)
    epochs: int = 7
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 5e-5
    adapt_images: int = 1000         # training images the adaptation learns from (METHOD.md section 7 used 1,000)
    adapt_epochs: int = 30
    adapt_lr: float = 0.01           # 1e-3 x batch/64 (the paper's) under-trains a freshly trained head at this scale
    device: str = "auto"
    workers: int | None = None


def demo_train_config(cfg: DemoConfig, data: Path, run: Path) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(run), model=cfg.model, train_res=cfg.train_res, test_res=cfg.train_res,
                       holdout=cfg.holdout, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, nesterov=True,
                       weight_decay=cfg.weight_decay, warmup_epochs=0.5, eval_every=cfg.epochs, seed=cfg.seed,
                       device=cfg.device, workers=cfg.workers)


def run_demo(cfg: DemoConfig, *, overwrite: bool = False, quiet: bool = False) -> dict:
    """Run every stage into ``cfg.out`` and return the summary (also written as demo.json)."""
    out = prepare_run_dir(cfg.out, overwrite=overwrite, marker="demo.json", what="demo directory")
    write_json(out / "demo.json", {"config": dataclasses.asdict(cfg), "status": "running"})
    say = (lambda text: None) if quiet else Progress.write
    timings: dict[str, float] = {}

    def stage(name: str, text: str):
        say(f"[{len(timings) + 1}/5] {text}")
        timings[name] = time.perf_counter()

    def done(name: str):
        timings[name] = round(time.perf_counter() - timings[name], 1)

    stage("synthesise", f"synthesising {cfg.classes} classes x ({cfg.train_per_class} train + "
                        f"{cfg.val_per_class} val) images")
    data = synthesize(out / "data", classes=cfg.classes, train_per_class=cfg.train_per_class,
                      val_per_class=cfg.val_per_class, seed=cfg.seed, progress=not quiet).root
    done("synthesise")

    stage("train", f"training {cfg.model} at {cfg.train_res}px for {cfg.epochs} epochs "
                   f"({cfg.holdout:.0%} of the training images held out)")
    trained = fit(demo_train_config(cfg, data, out / "run"), quiet=quiet)
    done("train")

    stage("analyze_sweep", "predicting the test resolution from the crop geometry, then measuring "
                           f"accuracy at {len(cfg.test_res)} test resolutions")
    sizes = image_sizes(scan_split(data / "train"))
    prediction = plot_apparent_size(out / "apparent_size.png", cfg.train_res, sizes=sizes, seed=cfg.seed,
                                    source=f"{len(sizes)} training images")
    # At the demo's batch size: the sweep also times the model on a few batches per resolution.
    swept = sweep_checkpoint(trained.run_dir, data,
                             SweepOptions(test_res=cfg.test_res, select_on="holdout", device=cfg.device,
                                          workers=cfg.workers, batch_size=cfg.batch_size, within=cfg.deploy_within),
                             quiet=quiet)
    done("analyze_sweep")

    stage("adapt", f"adapting at {', '.join(map(str, cfg.adapt_res))}px: FixRes (classifier + last batch-norm, "
                   f"{cfg.adapt_images} images) and label-free batch-norm statistics")
    adapted = _adapt_all(cfg, trained.run_dir, data, out / "adapted", swept, say)
    done("adapt")

    summary = {"config": dataclasses.asdict(cfg), "status": "done", "timings": timings,
               "train": trained.summary, "prediction": prediction.row(), "sweep": sweep_json(swept),
               "adapted": adapted}
    summary["report"] = {k: str(v) for k, v in write_demo_report(out, summary).items()}
    write_json(out / "demo.json", summary)
    return summary


def _adapt_all(cfg: DemoConfig, run: Path, data: Path, out: Path, swept, say) -> dict[str, list[dict]]:
    """FixRes and batch-norm adaptation at every ``cfg.adapt_res`` (the sweep's rows as 'before')."""
    before = {r.test_res: r for r in swept.rows}
    adapted: dict[str, list[dict]] = {"fixres": [], "bn": []}
    for k in cfg.adapt_res:
        for method in adapted:
            opts = AdaptOptions(test_res=k, method=method, images=cfg.adapt_images, batch_size=cfg.batch_size,
                                epochs=cfg.adapt_epochs, lr=cfg.adapt_lr, seed=cfg.seed, device=cfg.device,
                                workers=cfg.workers)
            result = adapt_checkpoint(run, data, opts, out=out / f"{method}-{k}", quiet=True,
                                      before=_eval_result(before.get(k)))
            adapted[method].append({**result.after.row(), "split": "val", "before_top1": result.before.top1,
                                    "seconds": round(result.seconds, 1), "execution": result.report["execution"]})
            say(f"  {method:>6} at {k:>3}px: val top-1 {result.before.top1:.2f} -> {result.after.top1:.2f} "
                f"({result.report['execution']}, {result.seconds:.1f}s)")
    return adapted


def _eval_result(row):
    """The sweep's val row at a resolution as an EvalResult (reused as 'before adaptation')."""
    if row is None:
        return None
    return EvalResult(top1=row.top1, top5=row.top5, loss=row.loss, n=row.n, n_skipped=row.n_skipped,
                      test_res=row.test_res, crop_pct=row.crop_pct, interpolation=row.interpolation)
