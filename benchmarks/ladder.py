"""One model for every budget, three ways, on the embedded dataset (CPU, ~20 min per seed).

For each seed: synthesise the embedded dataset (10 classes, 400 train + 100 val images per class,
5% of the training images held out), then, for the deployment resolutions R (32, 48, 64 by
default), with the demo's recipe (timm resnet10t, 7 epochs, batch 64, SGD Nesterov lr 0.1):

  (a) separate   one model trained at each r, tested at r
  (b) ladder     one model trained at 48 px, FixRes-adapted post hoc to each r (a ladder: classifier +
                 last batch-norm per rung, 1,000 images, 30 epochs), tested at r
  (c) switchable one model trained jointly at every r (fixres train --switchable-res: RS-Nets' basic
                 framework, shared weights and a private batch-norm per r), path r tested at r

Every model is tested at the same input size r (same cost): val top-1, training time (the sum for
(a), the 48 px run + the ladder's build for (b)) and the bytes to ship every resolution. Also the
time to switch a loaded model between rungs (their tensors only) against loading a checkpoint.

Usage: python benchmarks/ladder.py [--seeds 0 1 2] [--res 32 48 64] [--out /tmp/fixres-ladder]
Writes OUT/ladder.json after every seed; report whatever it measures.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from fixres.adapt import AdaptOptions
from fixres.adapt.ladder import adapt_ladder
from fixres.data.synth import synthesize
from fixres.experiments.demo import DemoConfig, demo_train_config
from fixres.measure.infer import EvalOptions, evaluate_checkpoint
from fixres.models.heads import find_classifier
from fixres.models.ladder import Ladder
from fixres.models.sources import open_checkpoint
from fixres.train.loop import fit


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*.safetensors"))


def one_seed(seed: int, res: list[int], out: Path, workers: int | None) -> dict:
    demo = DemoConfig(out=str(out / f"seed{seed}"), seed=seed, workers=workers)
    data = synthesize(out / f"seed{seed}" / "data", seed=seed, progress=False).root
    row: dict = {"seed": seed, "separate": {}, "ladder": {}, "switchable": {}}
    runs = {}
    for r in res:                                                  # (a)
        cfg = dataclasses.replace(demo_train_config(demo, data, out / f"seed{seed}" / f"run{r}"), train_res=r,
                                  test_res=r)
        runs[r] = fit(cfg, quiet=True, overwrite=True)
        result, _, _ = evaluate_checkpoint(runs[r].run_dir / "last", data, EvalOptions(test_res=r, workers=workers))
        row["separate"][r] = {"top1": result.top1, "train_s": runs[r].summary["train_seconds"],
                              "bytes": _bytes(runs[r].run_dir / "last")}
    base = 48 if 48 in runs else sorted(res)[len(res) // 2]
    t0 = time.perf_counter()                                       # (b)
    opts = AdaptOptions(test_res=res[0], method="fixres", images=demo.adapt_images, batch_size=demo.batch_size,
                        epochs=demo.adapt_epochs, lr=demo.adapt_lr, seed=seed, workers=workers)
    built = adapt_ladder(runs[base].run_dir / "last", data, opts, res, out=out / f"seed{seed}" / "ladder", quiet=True,
                         overwrite=True)
    ladder_s = time.perf_counter() - t0
    for rung in built.record["rungs"]:
        row["ladder"][rung["test_res"]] = {"top1": rung["after"]["top1"], "before": rung["before"]["top1"]}
    row["ladder_build_s"] = round(ladder_s, 1)
    row["ladder_train_s"] = runs[base].summary["train_seconds"]
    row["ladder_bytes"] = _bytes(out / f"seed{seed}" / "ladder")
    row.update(switchable(demo, data, res, out / f"seed{seed}" / "switchable"))           # (c)
    row["switch"] = switch_times(Ladder.open(out / f"seed{seed}" / "ladder"))
    return row


def switchable(demo: DemoConfig, data: Path, res: list[int], run: Path, lr: float | None = None) -> dict:
    """(c): one run trained jointly at every resolution (the demo's recipe; ``lr`` instead of its
    learning rate when given), each path tested at its resolution."""
    cfg = dataclasses.replace(demo_train_config(demo, data, run), train_res=max(res), test_res=max(res),
                              switchable_res=tuple(res), **({"lr": lr} if lr is not None else {}))
    switched = fit(cfg, quiet=True, overwrite=True)
    ladder = Ladder.open(switched.run_dir / "ladder")
    return {"switchable": {rung["test_res"]: {"top1": rung["after"]["top1"]} for rung in ladder.rungs},
            "switchable_train_s": switched.summary["train_seconds"],
            "switchable_bytes": _bytes(switched.run_dir / "ladder"), "switchable_lr": cfg.lr}


def switch_times(ladder: Ladder, repeats: int = 20) -> dict:
    """Median seconds to move a loaded model to another rung (its tensors), and to open a rung's
    checkpoint from disk."""
    model, _ = open_checkpoint(ladder.base)
    switch = ladder.switcher(model, find_classifier(model))
    swaps, loads = [], []
    for i in range(repeats):
        res = ladder.resolutions[i % len(ladder.resolutions)]
        t0 = time.perf_counter()
        switch(res)
        swaps.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        open_checkpoint(ladder.path(res))
        loads.append(time.perf_counter() - t0)
    return {"switch_ms": 1000 * statistics.median(swaps), "open_checkpoint_ms": 1000 * statistics.median(loads)}


def summarise(rows: list[dict], res: list[int]) -> str:
    def ms(values):
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        return f"{statistics.mean(values):.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")
    again = all("switchable_at_lr" in x for x in rows)
    extra = f" (c') switchable, lr {rows[0]['switchable_at_lr']['switchable_lr']:g} |" if again else ""
    lines = ["| r | (a) separate | (b) 48 px + FixRes ladder | (c) switchable (RS-Nets) |" + extra,
             "|---|---:|---:|---:|" + ("---:|" if again else "")]

    def at(x, key, r):
        per = x[key] if key != "switchable_at_lr" else x[key]["switchable"]
        return per.get(r, per.get(str(r)))["top1"]
    for r in res:
        lines.append(f"| {r} | {ms([at(x, 'separate', r) for x in rows])} | {ms([at(x, 'ladder', r) for x in rows])} | "
                     f"{ms([at(x, 'switchable', r) for x in rows])} |"
                     + (f" {ms([at(x, 'switchable_at_lr', r) for x in rows])} |" if again else ""))
    train_a = [sum(x["separate"].get(r, x["separate"].get(str(r)))["train_s"] for r in res) for x in rows]
    train_b = [x["ladder_train_s"] + x["ladder_build_s"] for x in rows]
    train_c = [x["switchable_train_s"] for x in rows]
    bytes_a = [sum(x["separate"].get(r, x["separate"].get(str(r)))["bytes"] for r in res) / 2**20 for x in rows]
    train_d = f" {ms([x['switchable_at_lr']['switchable_train_s'] for x in rows])} |" if again else ""
    lines += [f"| training s | {ms(train_a)} | {ms(train_b)} | {ms(train_c)} |" + train_d,
              f"| MiB for every r | {ms(bytes_a)} | {ms([x['ladder_bytes'] / 2**20 for x in rows])} | "
              f"{ms([x['switchable_bytes'] / 2**20 for x in rows])} |" + (" |" if again else ""),
              "", f"switching rungs in memory: {ms([x['switch']['switch_ms'] for x in rows])} ms; opening a rung's "
                  f"checkpoint: {ms([x['switch']['open_checkpoint_ms'] for x in rows])} ms"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--res", type=int, nargs="+", default=[32, 48, 64])
    p.add_argument("--out", default="/tmp/fixres-ladder")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--switchable-lr", type=float, default=None,
                   help="only (c), again, at this learning rate, on the datasets of an earlier run of this script "
                        "(OUT/ladder.json gains a 'switchable_at_lr' entry per seed)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.switchable_lr is not None:
        rows = json.loads((out / "ladder.json").read_text())
        for row in rows:
            seed = row["seed"]
            if seed not in args.seeds or row.get("switchable_at_lr", {}).get("switchable_lr") == args.switchable_lr:
                continue                                       # not asked for, or already measured: resumable
            demo = DemoConfig(out=str(out / f"seed{seed}"), seed=seed, workers=args.workers)
            row["switchable_at_lr"] = switchable(demo, out / f"seed{seed}" / "data", sorted(args.res),
                                                 out / f"seed{seed}" / f"switchable-lr{args.switchable_lr:g}",
                                                 lr=args.switchable_lr)
            (out / "ladder.json").write_text(json.dumps(rows, indent=2))
            print(f"seed {seed}: {json.dumps(row['switchable_at_lr'])}", flush=True)
        print(summarise(rows, sorted(args.res)))
        return
    rows = []
    for seed in args.seeds:
        rows.append(one_seed(seed, sorted(args.res), out, args.workers))
        (out / "ladder.json").write_text(json.dumps(rows, indent=2))
        print(f"seed {seed}: {json.dumps(rows[-1])}", flush=True)
    print(summarise(rows, sorted(args.res)))


if __name__ == "__main__":
    main()
