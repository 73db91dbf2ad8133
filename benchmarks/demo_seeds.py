"""The paper's three claims on the embedded dataset, over several seeds (CPU, ~13 min per seed).

For each seed: the demo (train resnet10t at 48 px with 5% of the training images held out,
sweep, choose the test resolution on the held-out images, adapt with FixRes and BN
statistics), and a second model trained at a HIGHER resolution (96 px, same epochs)
swept the same way. Prints mean and spread of:

  (i)   best test resolution (chosen on held-out training images) > train resolution;
  (ii)  FixRes adaptation beats no adaptation at the chosen test resolution (and at the
        best adapted resolution vs the best unadapted one);
  (iii) train low + adapt reaches train high accuracy, at what fraction of training time.

Usage: python benchmarks/demo_seeds.py [--seeds 0 1 2] [--out /tmp/fixres-seeds] [--high-res 96]
Writes OUT/seeds.json and prints a table; report whatever it measures.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

from fixres.experiments.demo import DemoConfig, demo_train_config, run_demo
from fixres.measure.sweep import SweepOptions, sweep_checkpoint
from fixres.train.loop import fit


def one_seed(seed: int, out: Path, high_res: int) -> dict:
    cfg = DemoConfig(out=str(out / f"seed{seed}"), seed=seed, rung_res=(64, 80, 96, 112, 128))
    t0 = time.perf_counter()
    demo = run_demo(cfg, overwrite=True, quiet=True)
    low = {"train_res": cfg.train_res, "train_s": demo["train"]["train_seconds"]}
    val = {r["test_res"]: r["top1"] for r in demo["sweep"]["rows"]}
    chosen = demo["sweep"]["chosen"]["test_res"]
    fixres = {r["test_res"]: r["after"]["top1"] for r in demo["ladders"]["fixres"]["rungs"]}
    bn = {r["test_res"]: r["after"]["top1"] for r in demo["ladders"]["bn"]["rungs"]}
    low.update(at_train=val[cfg.train_res], chosen=chosen, at_chosen=val[chosen],
               fixres_at_chosen=fixres.get(chosen), bn_at_chosen=bn.get(chosen),
               best_unadapted=max(val.values()), best_fixres=max(fixres.values()),
               best_fixres_res=max(fixres, key=fixres.get))

    data = Path(cfg.out) / "data"
    high_cfg = dataclasses.replace(demo_train_config(cfg, data, Path(cfg.out) / f"run{high_res}"),
                                   train_res=high_res, test_res=high_res)
    trained = fit(high_cfg, quiet=True, overwrite=True)
    resolutions = sorted({high_res, *cfg.test_res, int(high_res * 1.25), int(high_res * 1.5)})
    swept = sweep_checkpoint(trained.run_dir, data, SweepOptions(test_res=resolutions, select_on="holdout", timing=False),
                             quiet=True)
    hval = {r.test_res: r.top1 for r in swept.rows}
    high = {"train_res": high_res, "train_s": trained.summary["train_seconds"], "at_train": hval[high_res],
            "chosen": swept.best[0], "at_chosen": hval[swept.best[0]], "best_unadapted": max(hval.values())}
    return {"seed": seed, "low": low, "high": high, "seconds": round(time.perf_counter() - t0, 1)}


def summarise(results: list[dict]) -> list[tuple[str, list[float]]]:
    def col(f):
        return [f(r) for r in results]
    return [
        ("(i) chosen test res / train res (low model)", col(lambda r: r["low"]["chosen"] / r["low"]["train_res"])),
        ("(i) top-1 gain, chosen res vs train res (low)", col(lambda r: r["low"]["at_chosen"] - r["low"]["at_train"])),
        ("(ii) FixRes - none at the chosen res", col(lambda r: r["low"]["fixres_at_chosen"] - r["low"]["at_chosen"])),
        ("(ii) BN stats - none at the chosen res", col(lambda r: r["low"]["bn_at_chosen"] - r["low"]["at_chosen"])),
        ("(ii) best FixRes - best unadapted", col(lambda r: r["low"]["best_fixres"] - r["low"]["best_unadapted"])),
        ("(iii) low+FixRes best - high at its chosen res",
         col(lambda r: r["low"]["best_fixres"] - r["high"]["at_chosen"])),
        ("(iii) training time low / high", col(lambda r: r["low"]["train_s"] / r["high"]["train_s"])),
        ("low: top-1 at train res", col(lambda r: r["low"]["at_train"])),
        ("low: top-1 at chosen res", col(lambda r: r["low"]["at_chosen"])),
        ("low + FixRes: best top-1", col(lambda r: r["low"]["best_fixres"])),
        ("high: top-1 at train res", col(lambda r: r["high"]["at_train"])),
        ("high: top-1 at chosen res", col(lambda r: r["high"]["at_chosen"])),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="/tmp/fixres-seeds")
    p.add_argument("--high-res", type=int, default=96)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        results.append(one_seed(seed, out, args.high_res))
        (out / "seeds.json").write_text(json.dumps(results, indent=2))
        print(f"seed {seed}: {json.dumps(results[-1])}", flush=True)
    print(f"\n{len(results)} seeds, resnet10t, train 48 px vs {args.high_res} px, embedded dataset (CPU)")
    print(f"{'quantity':50s} {'mean':>8s} {'std':>7s} {'min':>7s} {'max':>7s}   per seed")
    for name, values in summarise(results):
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{name:50s} {statistics.mean(values):8.2f} {std:7.2f} {min(values):7.2f} {max(values):7.2f}   "
              + " ".join(f"{v:.2f}" for v in values))


if __name__ == "__main__":
    main()
