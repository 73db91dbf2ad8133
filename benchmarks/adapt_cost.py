"""What caching saves in ``fixres adapt``: cached features vs the full-network loop (CPU).

The authors fine-tuned ResNet-50 at 384 px for up to 56 epochs of full forward passes over
ImageNet. Our default runs the frozen layers once and trains the top on their cached
output, which is the same computation. This script runs both on the same checkpoint, data,
seed and number of epochs and reports the time of each (adaptation only: caching +
training, not the before/after evaluation they share), their ratio, and the val accuracy
each reaches (the same up to float rounding).

    python benchmarks/adapt_cost.py                       # small synthetic set + resnet10t trained here
    python benchmarks/adapt_cost.py --checkpoint RUN --data DIR --test-res 96 --epochs 10

Without ``--checkpoint`` it writes a small synthetic dataset (``fixres data synth``) and
trains ``resnet10t`` at 48 px on it for 15 epochs first (not timed). Keep the defaults for a
run of about two to three minutes on two CPU cores.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from fixres.adapt import AdaptOptions, adapt_checkpoint
from fixres.models.checkpoint import versions


def make_checkpoint(root: Path, workers: int) -> tuple[Path, Path]:
    from fixres.data.synth import synthesize
    from fixres.train.config import TrainConfig
    from fixres.train.loop import fit
    data = root / "synth"
    synthesize(data, classes=4, train_per_class=100, val_per_class=50, seed=0, workers=workers, progress=False)
    cfg = TrainConfig(data=str(data), out=str(root / "run"), model="resnet10t", train_res=48, test_res=48,
                      epochs=15, batch_size=32, lr=0.1, nesterov=True, workers=workers)
    fit(cfg, quiet=True)
    return root / "run", data


def measure(checkpoint, data, args, cache: bool) -> dict:
    result = adapt_checkpoint(checkpoint, data,
                              AdaptOptions(test_res=args.test_res, method=args.method, epochs=args.epochs,
                                           batch_size=args.batch_size, images=args.images, workers=args.workers,
                                           cache=cache, device="cpu"),
                              quiet=True)
    r = result.report
    return {"execution": r["execution"], "epochs": r["epochs"], "images": r["images"]["used"],
            "adapt_seconds": round(r["seconds"]["features"] + r["seconds"]["train"], 2),
            "features_seconds": r["seconds"]["features"], "train_seconds": r["seconds"]["train"],
            "before_top1": round(result.before.top1, 2), "after_top1": round(result.after.top1, 2),
            "before_loss": round(result.before.loss, 4), "after_loss": round(result.after.loss, 4),
            "val_images": result.after.n, "cache_mib": round(r.get("cache", {}).get("bytes", 0) / 2**20, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="checkpoint or run directory (default: train resnet10t on a synthetic set)")
    p.add_argument("--data", help="dataset directory (with --checkpoint)")
    p.add_argument("--test-res", type=int, default=96)
    p.add_argument("--method", default="fixres", choices=("fixres", "head", "full"))
    p.add_argument("--epochs", type=int, default=None, help="default: fixres adapt's default")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--images", type=int, default=None, help="adaptation images (default: all training images)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--json", help="also write the result to this file")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, data = ((Path(args.checkpoint), Path(args.data)) if args.checkpoint
                            else make_checkpoint(Path(tmp), args.workers))
        t0 = time.perf_counter()
        cached = measure(checkpoint, data, args, cache=True)
        naive = measure(checkpoint, data, args, cache=False)
        wall = time.perf_counter() - t0
    ratio = naive["adapt_seconds"] / max(cached["adapt_seconds"], 1e-9)
    row = {"method": args.method, "test_res": args.test_res, "cached": cached, "naive": naive,
           "speedup": round(ratio, 1), "top1_difference": round(cached["after_top1"] - naive["after_top1"], 2),
           "benchmark_seconds": round(wall, 1), "threads": torch.get_num_threads(), "machine": platform.processor()
           or platform.machine(), "versions": versions()}
    print(f"{'':8}{'exec':>8}{'epochs':>8}{'images':>8}{'adapt s':>10}{'features s':>12}{'train s':>10}"
          f"{'top-1 before':>14}{'top-1 after':>13}{'val loss after':>16}")
    for name, m in (("cached", cached), ("naive", naive)):
        print(f"{name:8}{m['execution']:>8}{m['epochs']:>8}{m['images']:>8}{m['adapt_seconds']:>10.2f}"
              f"{m['features_seconds']:>12.2f}{m['train_seconds']:>10.2f}{m['before_top1']:>14.2f}"
              f"{m['after_top1']:>13.2f}{m['after_loss']:>16.4f}")
    print(f"naive / cached time: {ratio:.1f}x; top-1 difference {row['top1_difference']:+.2f} points on "
          f"{cached['val_images']} val images; cache {cached['cache_mib']} MiB; {row['threads']} threads; "
          f"benchmark {wall:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
