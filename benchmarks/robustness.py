"""Does testing higher and adapting hurt robustness? Clean, corrupted, shifted and calibration
at the train resolution, the clean-chosen and the robust-chosen ones, unadapted and adapted
(fixres, bn, tent, tent at test time), on the embedded dataset over several seeds (CPU).

For each seed: the embedded dataset as ``fixres demo`` makes it (10 classes, 400 train + 100 val
per class; 5% of the training images held out by the runs) plus a shifted split
(``synthesize(shift=...)``: shifted/ reported, shifted-holdout/ to choose on and, unlabelled, for
Tent). Models: timm resnet10t trained at 48 px with the demo's recipe, and the families
benchmark's tiny ViT (test_vit, patch 8, 64 px); runs found under --runs-from are reused
(benchmarks/ladder.py's seed{s}/run48, benchmarks/families.py's vit{s}), else trained here.

1. One sweep per model (the best chosen on the held-out training images, never val; the
   corruptions of --corrupt applied there too, seeded as on val; shifted-holdout for the shifted
   objective): the clean-chosen resolution (``--objective clean``) and the robust-chosen one
   (``--objective mean``: the mean of clean, mean corrupted and shifted top-1).
2. Corrupted copies of val (the first 50 images of each class), once per seed: every image corrupted by the reference function
   (imagecorruptions-imaug) with the seed the sweep uses, saved losslessly (BMP) as
   ``c-<name>-<severity>/`` splits. tests/test_robustness.py checks that evaluating such a copy
   equals the sweep's corrupted rows.
3. For each of those resolutions and each method (none; fixres: classifier + last norm, 1,000
   training images, 30 epochs, lr 0.01 as the demo; bn: batch-norm statistics on 1,000 training
   images (batch-norm models only); tent: Tent on shifted-holdout as the unlabelled deployment
   images, its defaults; tent-episodic: Tent at test time, ``fixres eval --tent episodic``, batch
   64, batch-norm models only): clean val top-1 and ECE, mean top-1 over the corruptions (13:
   ImageNet-C's but glass and zoom blur, the slow ones; severity 3), shifted top-1.

Prints a markdown table of mean +- sd over seeds and writes OUT/robustness.json (after each seed)
and OUT/robustness.png (accuracy against resolution, clean, corrupted and shifted, unadapted).

    python benchmarks/robustness.py [--seeds 0 1 2] [--runs-from /tmp/fixres-ladder /tmp/fixres-families]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from PIL import Image

from fixres.adapt import AdaptOptions, adapt_checkpoint
from fixres.data.corruptions import Corruption, parse_corruptions, variant_seed
from fixres.data.folder import scan_split
from fixres.data.synth import synthesize
from fixres.experiments.demo import DemoConfig, demo_train_config
from fixres.measure.sweep import SweepOptions, sweep_checkpoint
from fixres.train.config import TrainConfig
from fixres.train.loop import fit

sys.path.insert(0, str(Path(__file__).parent))
from families import MODELS  # noqa: E402  (the tiny ViT's architecture arguments)

RES = {"resnet10t": [32, 48, 64, 80, 96, 128], "test_vit": [48, 64, 96, 128, 160]}
# ImageNet-C's 15 corruptions but glass_blur and zoom_blur, the two slow ones on a CPU (docs/robustness.md).
DEFAULT_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "snow",
                       "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")


def dataset(seed: int, out: Path, runs_from: list[Path], shift: str) -> Path:
    """The seed's dataset with the shifted splits of ``shift``: OUT/data{seed}-{shift}, its train/ and
    val/ links to a copy found beside a reused run (else written there), its shifted splits added
    (the reused copy is left as it is: it may hold another shift)."""
    data = out / f"data{seed}-{shift}"
    if (data / "shifted").is_dir():
        return data
    source = next((found for root in runs_from for found in (root / f"seed{seed}" / "data", root / f"data{seed}")
                   if (found / "val").is_dir()), None)
    if source is None:
        source = synthesize(out / f"data{seed}", seed=seed, progress=False).root
    data.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        if not (data / split).exists():
            (data / split).symlink_to((source / split).resolve(), target_is_directory=True)
    shutil.copy(source / "synth.json", data / "synth.json")
    synthesize(data, shift=shift, progress=False)
    return data


def trained(model: str, seed: int, data: Path, out: Path, runs_from: list[Path], workers: int) -> tuple[Path, float]:
    """A run of ``model`` for the seed (reused when found) and its training seconds."""
    names = {"resnet10t": (f"seed{seed}/run48", f"resnet{seed}"), "test_vit": (f"vit{seed}",)}[model]
    for root in [*runs_from, out]:
        for name in names:
            if (root / name / "summary.json").is_file():
                return root / name, json.loads((root / name / "summary.json").read_text()).get("train_seconds", 0)
    run = out / names[-1]
    if model == "resnet10t":
        cfg = demo_train_config(DemoConfig(seed=seed, workers=workers), data, run)
    else:
        name, kwargs = MODELS["ViT"]
        cfg = TrainConfig(data=str(data), out=str(run), model=name, model_kwargs=kwargs, train_res=64, test_res=64,
                          holdout=0.05, epochs=25, batch_size=64, optimizer="adamw", lr=1e-3, weight_decay=0.05,
                          warmup_epochs=1.0, eval_every=25, seed=seed, workers=workers)
    result = fit(cfg, quiet=True, overwrite=True)
    return run, result.summary["train_seconds"]


def corrupted_copies(data: Path, labels: tuple[str, ...], seed: int, per_class: int) -> list[str]:
    """``data/c-<name>-<sev>/``: the first ``per_class`` val images of each class, corrupted as a
    sweep with ``corrupt_seed=seed`` corrupts them (the seed of image i of the whole val split)."""
    index = scan_split(data / "val")
    seen: dict[int, int] = {}
    keep = []
    for i, sample in enumerate(index.samples):
        seen[sample.label] = seen.get(sample.label, 0) + 1
        if seen[sample.label] <= per_class:
            keep.append((i, sample))
    splits = []
    for label in labels:
        name, severity = label.split(":")
        split = f"c-{name}-{severity}"
        splits.append(split)
        if (data / split / "done").is_file():
            continue
        corruption = Corruption(name, int(severity))
        tmp = data / f".{split}"
        shutil.rmtree(tmp, ignore_errors=True)
        for i, sample in keep:
            target = (tmp / sample.path).with_suffix(".bmp")
            target.parent.mkdir(parents=True, exist_ok=True)
            corruption(Image.open(data / "val" / sample.path).convert("RGB"), variant_seed(seed, i, corruption)).save(target)
        (tmp / "done").write_text("")
        shutil.rmtree(data / split, ignore_errors=True)
        tmp.rename(data / split)
    return splits


def measure(checkpoint: Path, data: Path, res: int, corrupted: list[str], workers: int) -> dict:
    """Clean val top-1 and ECE, mean corrupted top-1 (and each), shifted top-1 at ``res``."""
    rows = {}
    for split in ["val", "shifted", *corrupted]:
        opts = SweepOptions(test_res=[res], split=split, select_on="none", timing=False, workers=workers)
        rows[split] = sweep_checkpoint(checkpoint, data, opts, quiet=True).rows[0]
    each = {s: rows[s].top1 for s in corrupted}
    return {"clean": rows["val"].top1, "ece": rows["val"].ece, "nll": rows["val"].nll, "shifted": rows["shifted"].top1,
            "corrupted": statistics.mean(each.values()), "each": each}


def measure_test_time(checkpoint: Path, data: Path, res: int, corrupted: list[str], workers: int) -> dict:
    """:func:`measure` with Tent at test time, episodic (``fixres eval --tent episodic``, batch 64,
    a seeded random order): every batch predicted while it is adapted on."""
    from fixres.adapt.test_time import TestTimeOptions, evaluate_with_tent
    from fixres.measure.infer import EvalOptions
    rows = {}
    for split in ["val", "shifted", *corrupted]:
        opts = EvalOptions(test_res=res, split=split, batch_size=64, workers=workers)
        rows[split] = evaluate_with_tent(checkpoint, data, opts, TestTimeOptions(tent="episodic"))[0]
    each = {s: rows[s].top1 for s in corrupted}
    return {"clean": rows["val"].top1, "ece": rows["val"].ece, "nll": rows["val"].nll, "shifted": rows["shifted"].top1,
            "corrupted": statistics.mean(each.values()), "each": each}


def adapted(method: str, run: Path, data: Path, res: int, seed: int, out: Path, workers: int) -> Path:
    opts = {"fixres": dict(images=1000, batch_size=64, epochs=30, lr=0.01),
            "bn": dict(images=1000),
            "tent": dict(unlabelled=str(data / "shifted-holdout"), batch_size=64)}[method]
    target = out / f"{method}-{res}"
    adapt_checkpoint(run, data, AdaptOptions(test_res=res, method=method, seed=seed, workers=workers, **opts),
                     out=target, overwrite=True, quiet=True)
    return target


def one_model(model: str, seed: int, data: Path, corrupted: list[str], args) -> dict:
    run, train_s = trained(model, seed, data, Path(args.out), args.runs_from, args.workers)
    t0 = time.perf_counter()
    swept = sweep_checkpoint(run, data, SweepOptions(test_res=RES[model], select_on="holdout", corrupt=args.corrupt,
                                                     corrupt_seed=seed, shift_select="shifted-holdout",
                                                     objective="mean", timing=False, workers=args.workers), quiet=True)
    shifted = sweep_checkpoint(run, data, SweepOptions(test_res=RES[model], split="shifted", select_on="none",
                                                       timing=False, workers=args.workers), quiet=True)
    curves = {"clean": {r.test_res: r.top1 for r in swept.rows}, "shifted": {r.test_res: r.top1 for r in shifted.rows},
              "corrupted": {}}
    for r in swept.corrupted_rows:
        curves["corrupted"].setdefault(r.test_res, []).append(r.top1)
    curves["corrupted"] = {k: statistics.mean(v) for k, v in curves["corrupted"].items()}
    train_res = swept.train_res
    choices = {"train": train_res, "clean": swept.objective_choices["clean"][0],
               "robust": swept.objective_choices["mean"][0]}
    # tent-episodic (test time) on batch-norm models only: on a ViT (no batch-norm) one step's predictions,
    # taken before the step, are the unadapted model's
    methods = ["none", "fixres", "tent"] + (["bn", "tent-episodic"] if model == "resnet10t" else [])
    work = Path(args.out) / f"adapted-{model}-{seed}"
    table: dict = {}
    for res in sorted(set(choices.values())):
        for method in methods:
            if method == "tent-episodic":
                table[f"{method}@{res}"] = measure_test_time(run, data, res, corrupted, args.workers)
            else:
                checkpoint = run if method == "none" else adapted(method, run, data, res, seed, work, args.workers)
                table[f"{method}@{res}"] = measure(checkpoint, data, res, corrupted, args.workers)
            print(f"  {model} seed {seed} {method}@{res}: {json.dumps({k: v for k, v in table[f'{method}@{res}'].items() if k != 'each'})}",
                  flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return {"model": model, "train_s": train_s, "choices": choices, "curves": curves, "table": table,
            "objective_choices": {k: v[0] for k, v in swept.objective_choices.items()},
            "seconds": round(time.perf_counter() - t0, 1)}


def fmt(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.mean(values):.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")


def summarise(rows: list[dict]) -> str:
    lines = []
    for model in dict.fromkeys(m["model"] for row in rows for m in row["models"]):
        results = [m for row in rows for m in row["models"] if m["model"] == model]
        picks = {k: [m["choices"][k] for m in results] for k in ("train", "clean", "robust")}
        lines += [f"### {model} ({len(results)} seeds; resolutions chosen per seed: "
                  + "; ".join(f"{k} {'/'.join(map(str, v))}" for k, v in picks.items()) + ")", "",
                  "| resolution | method | clean top-1 | mean corrupted top-1 | shifted top-1 | ECE (%) |",
                  "|---|---|---:|---:|---:|---:|"]
        for which in ("train", "clean", "robust"):
            for method in ("none", "fixres", "bn", "tent", "tent-episodic"):
                cells = [m["table"].get(f"{method}@{m['choices'][which]}") for m in results]
                if any(c is None for c in cells):
                    continue
                lines.append(f"| {which} | {method} | {fmt(c['clean'] for c in cells)} | "
                             f"{fmt(c['corrupted'] for c in cells)} | {fmt(c['shifted'] for c in cells)} | "
                             f"{fmt(c['ece'] for c in cells)} |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = list(dict.fromkeys(m["model"] for row in rows for m in row["models"]))
    fig, axes = plt.subplots(1, len(models), figsize=(8 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        results = [m for row in rows for m in row["models"] if m["model"] == model]
        for curve, style in (("clean", "-o"), ("corrupted", "--s"), ("shifted", ":^")):
            res = sorted(int(k) for k in results[0]["curves"][curve])
            mean = [statistics.mean(m["curves"][curve][k if k in m["curves"][curve] else str(k)] for m in results)
                    for k in res]
            ax.plot(res, mean, style, label=f"{curve} (unadapted)")
        for method, marker in (("fixres", "*"), ("tent", "x"), ("tent-episodic", "P")):
            if any(f"{method}@{m['choices']['clean']}" not in m["table"] for m in results):
                continue
            for curve, colour in (("clean", "C0"), ("corrupted", "C1"), ("shifted", "C2")):
                by_res: dict = {}                  # the seeds' mean at each clean-chosen resolution
                for m in results:
                    by_res.setdefault(m["choices"]["clean"], []).append(
                        m["table"][f"{method}@{m['choices']['clean']}"][curve])
                points = sorted((k, statistics.mean(v)) for k, v in by_res.items())
                ax.plot([p[0] for p in points], [p[1] for p in points], marker, color=colour, markersize=10,
                        label=f"{curve}, {method} at the clean choice")
        ax.axvline(results[0]["choices"]["train"], color="grey", lw=0.8)
        ax.set(title=f"{model}: top-1 against test resolution", xlabel="test resolution (px)", ylabel="val top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--models", nargs="+", choices=sorted(RES), default=["resnet10t", "test_vit"])
    p.add_argument("--corrupt", nargs="+", default=[f"{c}:3" for c in DEFAULT_CORRUPTIONS])
    p.add_argument("--corrupt-per-class", type=int, default=50, help="val images per class in the corrupted copies")
    p.add_argument("--shift", default="neon", help="the shifted split (neon: the hardest of the three for both models, docs/robustness.md)")
    p.add_argument("--runs-from", type=Path, nargs="*", default=[])
    p.add_argument("--out", default="/tmp/fixres-robustness")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--res", type=int, nargs="+", default=None, help="the sweep's resolutions (default: per model)")
    args = p.parse_args()
    if args.res:
        RES.update({m: sorted(set(args.res) | {64 if m == "test_vit" else 48}) for m in RES})
    args.corrupt = parse_corruptions(args.corrupt)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Resumable: a seed's models already in OUT/robustness.json (same shift and corruptions) are kept
    saved = json.loads((out / "robustness.json").read_text()) if (out / "robustness.json").is_file() else []
    rows = {r["seed"]: r for r in saved if r["shift"] == args.shift and r["corruptions"] == list(args.corrupt)}
    for seed in args.seeds:
        row = rows.setdefault(seed, {"seed": seed, "shift": args.shift, "corruptions": list(args.corrupt),
                                     "models": [], "seconds": 0.0})
        todo = [m for m in args.models if m not in {x["model"] for x in row["models"]}]
        if not todo:
            continue
        t0 = time.perf_counter()
        data = dataset(seed, out, args.runs_from, args.shift)
        corrupted = corrupted_copies(data, args.corrupt, seed, args.corrupt_per_class)
        row["data"] = str(data)
        row["models"] += [one_model(m, seed, data, corrupted, args) for m in todo]
        row["seconds"] = round(row["seconds"] + time.perf_counter() - t0, 1)
        (out / "robustness.json").write_text(json.dumps(sorted(rows.values(), key=lambda r: r["seed"]), indent=2))
        for split in corrupted:
            shutil.rmtree(data / split, ignore_errors=True)
    rows = sorted(rows.values(), key=lambda r: r["seed"])
    print(summarise(rows))
    plot(rows, out / "robustness.png")
    print(f"wrote {out / 'robustness.json'} and {out / 'robustness.png'}")


if __name__ == "__main__":
    main()
