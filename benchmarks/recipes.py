"""FixRes under today's training recipes, on the embedded dataset (CPU, ~20 min per seed).

For each seed: synthesise the embedded dataset (10 classes, 400 train + 100 val images per
class, 5% of the training images held out), then train timm resnet10t LOW (48 px, the
demo's protocol: 7 epochs, batch 64, SGD Nesterov lr 0.1, warm-up + cosine) under each
recipe, sweep it (the test resolution chosen on the held-out images, accuracy reported on
val) and adapt it with FixRes (classifier + last batch-norm, 1,000 images, 30 epochs) at
the chosen resolution:

  baseline     RandomResizedCrop + flip (the demo)
  mixup        + mixup 0.1 / CutMix 1.0, switch 0.5 (RSB A3's alphas), soft-target cross-entropy
  ema          + EMA of the weights (decay 0.99: ~520 steps here), sweep and adapt the EMA weights
  randaugment  + RandAugment rand-m6-mstd0.5-inc1 (RSB A3's policy)
  progressive  progressive resizing 32 -> 48 px (0-based epochs 0-2 at 32, 48 from epoch 5)

Usage: python benchmarks/recipes.py [--seeds 0 1 2] [--recipes baseline mixup ...] [--out DIR]
       [--train-per-class 400] [--epochs 7]
Writes OUT/recipes.json after every run (a partial run keeps what it measured) and prints
the table of mean and spread; report whatever it measures.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

from fixres.adapt import AdaptOptions, adapt_checkpoint
from fixres.data.synth import synthesize
from fixres.experiments.demo import DemoConfig, demo_train_config
from fixres.measure.sweep import SweepOptions, sweep_checkpoint
from fixres.train.loop import fit

RECIPES = {
    "baseline": {},
    "mixup": {"mixup": 0.1, "cutmix": 1.0},
    "ema": {"ema_decay": 0.99},
    "randaugment": {"auto_augment": "rand-m6-mstd0.5-inc1"},
    "progressive": {"progressive_from": 32, "progressive_epochs": (2, 5), "progressive_step": 8},
}
TEST_RES = (32, 40, 48, 56, 64, 72, 80, 88, 96, 112, 128)


def one_run(seed: int, recipe: str, data: Path, out: Path, demo: DemoConfig) -> dict:
    base = demo_train_config(demo, data, out / f"seed{seed}" / recipe)
    cfg = dataclasses.replace(base, **RECIPES[recipe])
    trained = fit(cfg, quiet=True, overwrite=True)
    ema = recipe == "ema"
    t0 = time.perf_counter()
    swept = sweep_checkpoint(trained.run_dir, data,
                             SweepOptions(test_res=TEST_RES, select_on="holdout", workers=demo.workers), ema=ema,
                             quiet=True)
    sweep_s = time.perf_counter() - t0
    val = {r.test_res: r.top1 for r in swept.rows}
    chosen = swept.best[0]
    adapted = adapt_checkpoint(trained.run_dir, data,
                               AdaptOptions(test_res=chosen, method="fixres", images=demo.adapt_images,
                                            batch_size=demo.batch_size, epochs=demo.adapt_epochs, lr=demo.adapt_lr,
                                            seed=seed, workers=demo.workers),
                               ema=ema, quiet=True, before=None)
    return {"seed": seed, "recipe": recipe, "weights": "ema" if ema else "model", "train_res": cfg.train_res,
            "at_train": val[cfg.train_res], "chosen": chosen, "at_chosen": val[chosen],
            "adapted_at_chosen": adapted.after.top1, "best_unadapted": max(val.values()),
            "best_unadapted_res": max(val, key=val.get), "train_s": trained.summary["train_seconds"],
            "sweep_s": round(sweep_s, 1), "adapt_s": round(adapted.seconds, 1),
            "predicted": swept.predicted.get("test_res"), "val": val}


COLUMNS = [("top-1 at train res (48)", "at_train"), ("chosen test res", "chosen"), ("top-1 at chosen", "at_chosen"),
           ("FixRes-adapted at chosen", "adapted_at_chosen"), ("gain chosen - train", None),
           ("gain adapted - train", None), ("train s", "train_s")]


def value(row: dict, key: str | None, name: str) -> float:
    if key is not None:
        return row[key]
    return row["at_chosen" if "chosen" in name.split(" - ")[0] else "adapted_at_chosen"] - row["at_train"]


def table(results: list[dict]) -> str:
    recipes = [r for r in RECIPES if any(x["recipe"] == r for x in results)]
    lines = ["| recipe | seeds | " + " | ".join(name for name, _ in COLUMNS) + " |",
             "|---|---:|" + "---:|" * len(COLUMNS)]
    for recipe in recipes:
        rows = [x for x in results if x["recipe"] == recipe]
        cells = []
        for name, key in COLUMNS:
            vals = [value(r, key, name) for r in rows]
            mean = statistics.mean(vals)
            spread = f" ± {statistics.stdev(vals):.1f}" if len(vals) > 1 else ""
            cells.append(f"{mean:.0f}{spread}" if key in ("chosen", "train_s") else f"{mean:.1f}{spread}")
        lines.append(f"| {recipe} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--out", default="/tmp/fixres-recipes")
    p.add_argument("--train-per-class", type=int, default=400)
    p.add_argument("--epochs", type=int, default=7)
    p.add_argument("--workers", type=int, default=None)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = out / "recipes.json"
    results = json.loads(record.read_text()) if record.is_file() else []
    done = {(r["seed"], r["recipe"]) for r in results}
    for seed in args.seeds:
        demo = DemoConfig(out=str(out), seed=seed, train_per_class=args.train_per_class, epochs=args.epochs,
                          workers=args.workers)
        data = out / f"data-seed{seed}"
        if not (data / "val").is_dir():
            synthesize(data, classes=demo.classes, train_per_class=demo.train_per_class,
                       val_per_class=demo.val_per_class, seed=seed, progress=False)
        for recipe in args.recipes:
            if (seed, recipe) in done:
                continue
            results.append(one_run(seed, recipe, data, out, demo))
            record.write_text(json.dumps(results, indent=2))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "val"}), flush=True)
    print(f"\n{len(results)} runs, resnet10t trained at 48 px ({args.epochs} epochs, "
          f"{args.train_per_class} train images per class), embedded dataset (CPU); mean ± std over seeds")
    print(table(results))


if __name__ == "__main__":
    main()
