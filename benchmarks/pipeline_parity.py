"""Top-1 of one checkpoint through the pil pipeline and through the fast one, on the embedded
synthetic dataset (``fixres data synth``): the same images, the same model, only the data
path differs.

Trains a small model with ``fixres train`` (so the trainer's pipeline switch is exercised),
then evaluates it at each --test-res through: ``pil`` (the reference), ``fast`` with the
device decoder (nvJPEG on a GPU, torchvision's CPU decoder on the CPU; batched resampling),
``fast`` with the workers decoder (full decode: its evaluation default) and with reduced-size
(draft) decoding (opt-in for evaluation). Prints
top-1, and how many predictions changed against ``pil``.

    python benchmarks/pipeline_parity.py [--device cpu] [--epochs 6] [--test-res 64 96]

About 3 minutes on 2 CPU cores with the defaults.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fixres.core.runtime import Dist, Runtime, autocast_dtype
from fixres.data import scan_dataset
from fixres.data.pipeline import eval_batches
from fixres.measure.infer import Tally, infer
from fixres.models.sources import open_checkpoint

# name -> (pipeline, eval_batches keywords)
PATHS = {"pil": ("pil", {}), "fast device": ("fast", dict(decoder="device")),
         "fast workers": ("fast", dict(decoder="workers")),
         "fast workers, draft": ("fast", dict(decoder="workers", draft=True))}


def parity(device: torch.device, work: Path, *, model: str = "resnet10t", train_res: int = 48, epochs: int = 6,
           batch: int = 64, lr: float = 0.2, train_per_class: int = 100, val_per_class: int = 100,
           test_res=(64, 96), workers: int = 1, pipeline: str = "fast", reuse: bool = False, log=print) -> dict:
    data, run = work / "synth", work / "run"
    py = [sys.executable, "-m", "fixres"]
    if not (data / "val").is_dir():
        subprocess.run(py + ["data", "synth", str(data), "--train-per-class", str(train_per_class),
                             "--val-per-class", str(val_per_class), "--quiet"], check=True)
    t0 = time.perf_counter()
    if reuse and (run / "summary.json").is_file():
        log(f"  reusing the checkpoint of {run}")
    else:
        if run.exists():
            shutil.rmtree(run)
        subprocess.run(py + ["train", "--data", str(data), "--out", str(run), "--model", model, "--train-res",
                             str(train_res), "--epochs", str(epochs), "--batch-size", str(batch), "--lr", str(lr),
                             "--pipeline", pipeline, "--workers", str(workers), "--device", str(device), "--quiet"]
                       + (["--channels-last"] if device.type == "cuda" else []), check=True)
    summary = json.loads((run / "summary.json").read_text())
    net, meta = open_checkpoint(run)
    net.to(device)
    val, prep = scan_dataset(data).val, meta.preprocessing
    out = {"model": model, "train_res": train_res, "epochs": epochs, "images": len(val),
           "train_seconds": round(time.perf_counter() - t0, 1), "train_pipeline": pipeline,
           "train_images_per_s": summary["train_images_per_s"]}
    for res in test_res:
        row, preds = {}, {}
        for name, (pipeline_name, kw) in PATHS.items():
            tally, p = Tally(device), []
            rt = Runtime(device, autocast_dtype("auto", device), workers=workers, pipeline=pipeline_name)
            batches = eval_batches(val, prep.test_view(res), rt, batch_size=100, **kw)
            for logits, b in infer(net, batches, prep.normalizer(), rt):
                tally.add(logits, b.labels, len(b.skipped))
                p.append(logits.argmax(1).cpu())
            r = tally.result(Dist(), test_res=res, crop_pct=prep.crop_pct, interpolation=prep.interpolation)
            preds[name] = torch.cat(p)
            row[name] = {"top1": round(r.top1, 2), "n": r.n,
                         "changed_vs_pil": int((preds[name] != preds["pil"]).sum())}
        out[res] = row
        log(f"  top-1 at {res}px on {len(val)} images: " + "; ".join(
            f"{k} {v['top1']:.2f}" + (f" ({v['top1'] - row['pil']['top1']:+.2f}, {v['changed_vs_pil']} changed)"
                                      if k != "pil" else "") for k, v in row.items()))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="resnet10t")
    p.add_argument("--train-res", type=int, default=48)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--test-res", type=int, nargs="+", default=[64, 96])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--train-pipeline", default="pil", choices=("pil", "fast"))
    p.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "fixres-bench-parity"))
    p.add_argument("--reuse", action="store_true", help="evaluate the checkpoint of an earlier run of this script")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    print(f"fixres pipeline parity on {args.device}, torch {torch.__version__}", flush=True)
    out = parity(torch.device(args.device), Path(args.data), model=args.model, train_res=args.train_res,
                 epochs=args.epochs, test_res=args.test_res, workers=args.workers, pipeline=args.train_pipeline,
                 reuse=args.reuse)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
