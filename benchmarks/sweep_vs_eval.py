"""One ``sweep`` pass over N test resolutions against N separate ``evaluate`` calls.

Both sides use the same model (a checkpoint opened once), the same split, batch size,
workers and device, so the difference is what the sweep saves: decoding each image once
instead of N times (and starting the loader once). Resizing to every geometry is not
shared (each geometry resizes the decoded image, exactly as ``evaluate`` does), and the
model runs once per geometry on both sides. The sweep's results are checked against the
``evaluate`` ones (top-1/top-5/n equal, loss within 1e-5). A second figure times the data
side alone (loaders drained, no model): the saving where the model is cheap, as on a GPU.

Default: 10 synthetic classes x 30 val images (``fixres data synth``, JPEGs with a shorter
side of 160-400 px), a randomly initialised timm ``test_resnet`` saved as a checkpoint,
resolutions 32:96:16, batch 50, 1 loader worker, 1 compute thread, CPU, median of 3.
About 40 s on 2 shared cores. A model whose CPU compute dominates gains less (the
decode it saves is then a small part of the time).

    python benchmarks/sweep_vs_eval.py [--data DIR] [--model resnet10t] [--test-res 32:96:16] [--workers 1]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fixres.core.runtime import Runtime
from fixres.data.folder import list_classes, scan_split
from fixres.data.pipeline import eval_batches, sweep_batches
from fixres.data.preprocessing import Preprocessing
from fixres.data.synth import synthesize
from fixres.data.transforms import parse_resolutions
from fixres.measure.infer import evaluate
from fixres.measure.sweep import sweep_model
from fixres.models import create_model
from fixres.models.checkpoint import CheckpointMeta, save_checkpoint
from fixres.models.sources import open_checkpoint


def drain(loader) -> None:
    for _ in loader:
        pass


def make_checkpoint(directory: Path, model_name: str, classes: tuple[str, ...], train_res: int) -> Path:
    torch.manual_seed(0)
    model = create_model(model_name, len(classes))
    declared = Preprocessing.from_pretrained_cfg(model.pretrained_cfg, model_name, sizes=False)
    meta = CheckpointMeta(model=model_name, class_names=classes,
                          preprocessing=Preprocessing(declared.mean, declared.std, train_res=train_res, test_res=train_res))
    save_checkpoint(directory, model, meta)
    return directory


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="ImageFolder dataset with val/ (default: a synthetic one in a temporary directory)")
    p.add_argument("--val-per-class", type=int, default=30, help="synthetic val images per class (default: 30)")
    p.add_argument("--model", default="test_resnet", help="timm model, randomly initialised (default: test_resnet)")
    p.add_argument("--test-res", nargs="+", default=["32:96:16"])
    p.add_argument("--crop-pct", type=float, default=0.875)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions of each side (default: 3; median shown)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch compute threads (default: 1, leaving the other core to the loader worker)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "synth"
        if not args.data:
            synthesize(data, classes=10, train_per_class=1, val_per_class=args.val_per_class, workers=2, progress=False)
        classes = list_classes(data / "val")
        split = scan_split(data / "val", classes)
        resolutions = parse_resolutions(args.test_res)
        model, meta = open_checkpoint(make_checkpoint(Path(tmp) / "ckpt", args.model, classes, resolutions[0]))
        rt = Runtime.resolve(args.device, workers=args.workers)
        model.to(rt.device)
        prep, bs = meta.preprocessing.override("benchmark", crop_pct=args.crop_pct), args.batch_size
        geometries = [(r, args.crop_pct) for r in resolutions]

        evaluate(model, split, prep.override("benchmark", test_res=resolutions[0]), rt, batch_size=bs)   # warm-up
        t_sweep, t_eval = [], []
        for _ in range(args.repeat):    # alternate the two, so that load changes hit both alike
            t0 = time.perf_counter()
            swept = sweep_model(model, split, prep, geometries, rt, batch_size=bs)
            t_sweep.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            separate = [evaluate(model, split, prep.override("benchmark", test_res=r), rt, batch_size=bs)[0]
                        for r, _ in geometries]
            t_eval.append(time.perf_counter() - t0)
        # The data side alone (no model): what the sweep saves where the model is cheap, as on a GPU.
        views = [prep.test_view(r) for r, _ in geometries]
        d_sweep, d_eval = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            drain(sweep_batches(split, views, rt, batch_size=bs))
            d_sweep.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for view in views:
                drain(eval_batches(split, view, rt, batch_size=bs))
            d_eval.append(time.perf_counter() - t0)

    for a, b in zip(swept, separate):
        same = (a.top1, a.top5, a.n) == (b.top1, b.top5, b.n) and abs(a.loss - b.loss) <= 1e-5
        if not same:
            raise SystemExit(f"MISMATCH at {a.test_res}px: sweep {a.row()} vs evaluate {b.row()}")
    print(f"{len(split)} images of {data if args.data else 'synthetic data (fixres data synth)'}, {args.model}, "
          f"{len(resolutions)} resolutions {resolutions}, crop_pct {args.crop_pct:g}, batch {args.batch_size}, "
          f"workers {args.workers}, {rt.device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    ms, me = statistics.median(t_sweep), statistics.median(t_eval)
    print(f"median of {args.repeat} (all runs: sweep {', '.join(f'{t:.2f}' for t in t_sweep)}; "
          f"evaluate {', '.join(f'{t:.2f}' for t in t_eval)})")
    print(f"sweep (one pass):        {ms:7.2f} s")
    print(f"evaluate x{len(resolutions):<2d} (separate): {me:7.2f} s")
    print(f"speed-up: {me / ms:.2f}x  (results identical: top-1/top-5/n equal, loss within 1e-5)")
    ds, de = statistics.median(d_sweep), statistics.median(d_eval)
    print(f"data side only (decode + resize + batch, no model): sweep {ds:.2f} s, separate {de:.2f} s, "
          f"{de / ds:.2f}x")


if __name__ == "__main__":
    main()
