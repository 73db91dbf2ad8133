"""The fast data pipeline on a GPU: ResNet-50 training and a test-resolution sweep, side by side
with the same model fed synthetic tensors already on the GPU (the ceiling) and with the usual
PyTorch pipeline (DataLoader + PIL + torchvision transforms, the same number of workers).

Generates its own data (photo-like JPEGs, 500x375 / 375x500 / 500x333, ~95 KB), packs it
(original bytes; and with the shorter side at most --max-size), then measures:

1. training images/s at each --res (batch 256, bf16 autocast, channels_last, fused SGD, the
   loss kept on the GPU): synthetic / fast (nvJPEG + device crops; and the workers'
   reduced-size decoder) / torchvision; the ratios issue 14 sets targets for
   (fast >= 0.9 x synthetic; fast >= 2 x torchvision at 128 px; benchmarks/gpu_targets.py
   prints them met or not);
2. sweep images/s over --sweep resolutions (crop 0.875, inference): synthetic / fast /
   fixres pil (PIL + torchvision transforms in workers, one decode per image);
3. parity: pixels of the device path (nvJPEG + batched resampling) against the PIL path,
   and the top-1 of one checkpoint (``fixres train --pipeline fast`` on the embedded
   synthetic dataset, so the trainer's integration runs on the GPU too) through both;
4. compile: the synthetic-tensor training step at --compile-res, eager and
   ``torch.compile(mode="reduce-overhead")`` (CUDA graphs), at --batch and --large-batch:
   what a compiled step or a larger batch would give over the plain synthetic figure. A
   few steps each; a compiled configuration that fails is reported, the others still
   run, and none starts after --compile-budget seconds of the section.

    python benchmarks/pipeline_gpu.py [--json out.json]        # on a CUDA machine, 5-7 minutes
    python benchmarks/pipeline_gpu.py --skip compile           # without section 4 (3-5 minutes)
    python benchmarks/pipeline_gpu.py --smoke --device cpu     # every code path at toy size, on the CPU
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import Stepper, cores, cycle, make_photos, timed_steps, torchvision_loader  # noqa: E402

from fixres.core.runtime import Runtime, autocast, autocast_dtype  # noqa: E402
from fixres.data import scan_split  # noqa: E402
from fixres.data.loader import TrainBatches, default_workers  # noqa: E402
from fixres.data.packer import PackOptions, pack  # noqa: E402
from fixres.data.pipeline import eval_batches, sweep_batches, train_batches  # noqa: E402
from fixres.data.transforms import EvalTransform, Normalizer, TrainTransform  # noqa: E402
from fixres.models import create_model  # noqa: E402
from fixres.models.checkpoint import versions  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def log(text: str = "") -> None:
    print(text, flush=True)


def train_rates(args, device, res: int, photos: Path, stores: dict, W: int) -> dict:
    """Training images/s of every feed at one resolution."""
    tf = TrainTransform(res)
    n = len(stores["store"])
    sampler = TrainBatches(n, args.batch, seed=0)
    feeds, fast = {"synthetic": None}, Runtime(device, pipeline="fast", workers=W)
    for name, split in stores.items():
        feeds[f"fast device ({name})"] = (lambda s=split: train_batches(s, tf, sampler, fast, decoder="device"))
    feeds["fast workers (store)"] = lambda: train_batches(stores["store"], tf, sampler, fast, decoder="workers")
    feeds["torchvision"] = lambda: torchvision_loader(photos, res, batch_size=args.batch, workers=W,
                                                      pin_memory=device.type == "cuda")
    got, stats = {}, {}
    warm = Stepper(create_model(args.model, 100), device, channels_last=device.type == "cuda")
    x = torch.randint(0, 256, (args.batch, 3, res, res), dtype=torch.uint8, device=device)
    timed_steps(warm, iter(lambda: (x, x.new_zeros(args.batch, dtype=torch.long)), None), warmup=args.warmup,
                steps=args.warmup, sync=warm.sync)      # first use of this shape: cuDNN, allocator, threads
    del warm
    for name, make in feeds.items():
        torch.manual_seed(0)
        step = Stepper(create_model(args.model, 100), device, channels_last=device.type == "cuda")
        if make is None:
            x = torch.randint(0, 256, (args.batch, 3, res, res), dtype=torch.uint8, device=device)
            y = torch.randint(0, 100, (args.batch,), device=device)
            batches = iter(lambda: (x, y), None)
        else:
            iterable = make()
            batches = cycle(lambda: iterable)
        got[name] = timed_steps(step, batches, warmup=args.warmup, steps=args.steps, sync=step.sync,
                                normalised=name == "torchvision")
        if make is not None and hasattr(iterable, "stats"):
            stats[name] = iterable.stats.row()
        log(f"  {res:3d}px {name:28s} {got[name]:9.0f} img/s")
        del step, batches
        if device.type == "cuda":
            torch.cuda.empty_cache()
    syn, tv = got["synthetic"], got["torchvision"]
    for name, rate in got.items():
        log(f"  {res:3d}px {name:28s} {rate / syn:5.2f} of synthetic   x{rate / tv:5.2f} vs torchvision")
    return {"images_per_s": got, "decode_stats": stats}


@torch.no_grad()
def sweep_rates(args, device, photos_split, store_split, W: int) -> dict:
    geometries = [(r, 0.875) for r in args.sweep]
    model = create_model(args.model, 100).to(device).eval()
    cl = device.type == "cuda"
    if cl:
        model.to(memory_format=torch.channels_last)
    prep, amp = Normalizer(MEAN, STD, cl), autocast_dtype("auto", device)
    n = min(len(store_split), args.sweep_images)
    idx = list(range(n))
    photos_split = type(photos_split)(photos_split.root, photos_split.classes, photos_split.samples[:n], [])
    store_split = type(store_split)(store_split.root, store_split.classes, [store_split.samples[i] for i in idx], [])

    def run(batches) -> float:
        t0, seen = time.perf_counter(), 0
        for b in batches:
            for x in b.images:
                with autocast(device, amp):
                    model(prep(x, device))
            seen += len(b.labels)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return seen / (time.perf_counter() - t0)

    class Synthetic:
        def __init__(self):
            self.xs = tuple(torch.randint(0, 256, (args.eval_batch, 3, r, r), dtype=torch.uint8, device=device)
                            for r, _ in geometries)
            self.labels = torch.zeros(args.eval_batch, dtype=torch.long)

        def __iter__(self):
            for _ in range(0, n, args.eval_batch):
                yield type("B", (), {"images": self.xs, "labels": self.labels})

    run(Synthetic())     # warm-up (cuDNN algorithms for every shape)
    views = [EvalTransform(r, c) for r, c in geometries]
    fast, pil = Runtime(device, pipeline="fast", workers=W), Runtime(device, pipeline="pil", workers=W)
    got = {"synthetic": run(Synthetic()),
           "fast device (store)": run(sweep_batches(store_split, views, fast, decoder="device",
                                                    batch_size=args.eval_batch)),
           "fast workers (store)": run(sweep_batches(store_split, views, fast, decoder="workers",
                                                     batch_size=args.eval_batch)),
           "fixres pil (folder)": run(sweep_batches(photos_split, views, pil, batch_size=args.eval_batch))}
    for name, rate in got.items():
        log(f"  {name:28s} {rate:8.0f} img/s   {rate / got['synthetic']:.2f} of synthetic   "
            f"x{rate / got['fixres pil (folder)']:.2f} vs pil")
    return {"geometries": geometries, "images": n, "images_per_s": got}


def pixel_parity(device, split, n: int) -> dict:
    """nvJPEG + device resampling against Pillow + torchvision, on the same images and boxes."""
    sub = type(split)(split.root, split.classes, split.samples[:n], [])
    out = {}
    view, pil, fast = EvalTransform(224, 0.875), Runtime(device, pipeline="pil", workers=4), Runtime(
        device, pipeline="fast", workers=4)
    ref = torch.cat([b.images for b in eval_batches(sub, view, pil, batch_size=64)])
    got = torch.cat([b.images.cpu() for b in eval_batches(sub, view, fast, decoder="device", batch_size=64)])
    d = (ref.int() - got.int()).abs()
    out["eval224"] = {"mean_abs": round(d.float().mean().item(), 4), "max": int(d.max()),
                      "p99": float(d.float().flatten()[:10**7].quantile(0.99))}
    sampler = TrainBatches(len(sub), min(64, len(sub)), seed=0)
    tf = TrainTransform(128)
    ref = torch.cat([b.images for b in train_batches(sub, tf, sampler, pil)])
    got = torch.cat([b.images.cpu() for b in train_batches(sub, tf, sampler, fast, decoder="device")])
    d = (ref.int() - got.int()).abs()
    out["train128"] = {"mean_abs": round(d.float().mean().item(), 4), "max": int(d.max())}
    log(f"  nvJPEG + device resampling vs PIL path (uint8 levels): {out}")
    return out


def top1_parity(args, device, work: Path) -> dict:
    """Train on the embedded synthetic dataset with --pipeline fast, evaluate through every pipeline."""
    from pipeline_parity import parity
    return parity(device, work, model="resnet18", train_res=64, epochs=args.synth_epochs, batch=args.synth_batch,
                  train_per_class=args.synth_train, val_per_class=args.synth_val, test_res=(64, 96),
                  workers=args.workers, pipeline="fast", log=log)


def compiled_step_rate(args, device, res: int, batch: int, mode: str | None) -> dict:
    """Synthetic-tensor training images/s of one configuration (``mode`` None: eager), and
    the seconds its warm-up took (compilation and CUDA-graph recording included)."""
    torch.manual_seed(0)
    step = Stepper(create_model(args.model, 100), device, channels_last=device.type == "cuda")
    if mode is not None:
        step.model = torch.compile(step.model, mode=mode)
    x = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8, device=device)
    y = torch.randint(0, 100, (batch,), device=device)

    def one_step(images, labels, normalised=False):
        torch.compiler.cudagraph_mark_step_begin()      # a new training iteration for the CUDA-graph trees
        step(images, labels, normalised)

    t0 = time.perf_counter()
    for _ in range(args.warmup):        # compilation and CUDA-graph recording happen here
        one_step(x, y)
    step.sync()
    warm = time.perf_counter() - t0
    rate = timed_steps(one_step, iter(lambda: (x, y), None), warmup=0, steps=args.compile_steps, sync=step.sync)
    return {"images_per_s": rate, "warmup_s": round(warm, 1)}


def compile_rates(args, device) -> dict:
    """Section 4: eager and compiled synthetic training steps at two batch sizes, side by side."""
    res, start = args.compile_res, time.perf_counter()
    configs = [(mode, batch) for mode in (None, "reduce-overhead") for batch in (args.batch, args.large_batch)]
    rows = {}
    for mode, batch in configs:
        name = f"{mode or 'eager'}, batch {batch}"
        if mode is not None and time.perf_counter() - start > args.compile_budget:
            rows[name] = {"skipped": f"over the section's {args.compile_budget:.0f} s budget"}
        else:
            try:        # an optional measurement: a compiler failure is a figure, not the end of the run
                rows[name] = compiled_step_rate(args, device, res, batch, mode)
            except Exception as e:  # noqa: BLE001 - reported, the other configurations still run
                traceback.print_exc()
                rows[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        row, base = rows[name], rows.get(f"eager, batch {args.batch}", {}).get("images_per_s")
        if "images_per_s" in row and base:
            row["of_eager"] = round(row["images_per_s"] / base, 3)
            log(f"  {res:3d}px {name:30s} {row['images_per_s']:9.0f} img/s   x{row['of_eager']:.2f} of eager "
                f"batch {args.batch}   (warm-up {row['warmup_s']} s)")
        else:
            log(f"  {res:3d}px {name:30s} {row.get('error') or row.get('skipped') or row}")
    return {"res": res, "steps": args.compile_steps, "rows": rows}


def prepare_data(args, work: Path, report: dict) -> tuple[Path, dict]:
    """The photo folder and its packed stores (original bytes; and, unless --max-size 0,
    with the shorter side at most --max-size)."""
    photos = work / "photos"
    report["data"] = make_photos(photos, classes=100, per_class=args.images // 100 or 1, unique=args.unique,
                                 workers=cores())
    log(f"data: {report['data']}")
    options = {"store": PackOptions()}
    if args.max_size:
        options[f"max{args.max_size}"] = PackOptions(max_size=args.max_size)
    stores = {}
    for name, opts in options.items():
        t0 = time.perf_counter()
        s = pack(photos, work / name, opts, progress=False)[0]
        stores[name] = scan_split(work / name)
        log(f"pack {name}: {s.samples} images, {s.stored_bytes / 2**20:.0f} MB, {time.perf_counter() - t0:.1f}s")
    return photos, stores


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="toy sizes: check every code path quickly (CPU is fine)")
    p.add_argument("--workers", type=int, default=default_workers())
    p.add_argument("--model", default="resnet50")
    p.add_argument("--res", type=int, nargs="+", default=[128, 224])
    p.add_argument("--sweep", type=int, nargs="+", default=[224, 288, 320, 384])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--eval-batch", type=int, default=250)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=12)
    p.add_argument("--images", type=int, default=14000,
                   help="files in the benchmark folder (>= (warmup + steps) x batch: no epoch ends while timed)")
    p.add_argument("--unique", type=int, default=3000, help="of which rendered (the rest are copies)")
    p.add_argument("--sweep-images", type=int, default=5000)
    p.add_argument("--max-size", type=int, default=192, help="shorter side of the second store (0: no second store)")
    p.add_argument("--synth-train", type=int, default=300)
    p.add_argument("--synth-val", type=int, default=100)
    p.add_argument("--synth-epochs", type=int, default=8)
    p.add_argument("--synth-batch", type=int, default=128)
    p.add_argument("--compile-res", type=int, default=128)
    p.add_argument("--large-batch", type=int, default=512)
    p.add_argument("--compile-steps", type=int, default=20)
    p.add_argument("--compile-budget", type=float, default=90.0,
                   help="seconds into section 4 after which no further compiled configuration starts")
    p.add_argument("--skip", nargs="+", action="extend", default=[], choices=["train", "sweep", "parity", "compile"],
                   help="sections not to run (repeatable: gpu_check.sh adds its own to the caller's)")
    p.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "fixres-bench-gpu"))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.smoke:
        args.model, args.res, args.sweep, args.batch, args.eval_batch = "resnet10t", [32], [32, 48], 16, 16
        args.steps, args.warmup, args.images, args.unique, args.sweep_images = 2, 1, 64, 16, 32
        args.synth_train, args.synth_val, args.synth_epochs, args.workers = 8, 4, 1, min(args.workers, 2)
        args.synth_batch, args.compile_res, args.large_batch, args.compile_steps = 40, 32, 32, 2
        args.compile_budget = min(args.compile_budget, 20.0)      # a cold compilation on a CPU takes ~45 s
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    W, work = args.workers, Path(args.data)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "gpu": gpu, "cpu_cores": cores(), "workers": W,
              "python": platform.python_version(), "versions": versions(), "args": vars(args), "section_seconds": {}}
    log(f"fixres GPU pipeline check: {gpu}, {cores()} cores, {W} workers, torch {torch.__version__}, "
        f"{report['date']}")
    t_start = time.perf_counter()
    wanted = [n for n in ("train", "sweep", "pixels", "top1", "compile")
              if n not in args.skip and not (n in ("pixels", "top1") and "parity" in args.skip)]
    photos, stores = prepare_data(args, work, report) if {"train", "sweep", "pixels"} & set(wanted) else (None, {})
    sections = {"train": lambda: {res: train_rates(args, device, res, photos, stores, W) for res in args.res},
                "sweep": lambda: sweep_rates(args, device, scan_split(photos), stores["store"], W),
                "pixels": lambda: pixel_parity(device, stores["store"], 256 if not args.smoke else 16),
                "top1": lambda: top1_parity(args, device, work),
                "compile": lambda: compile_rates(args, device)}
    titles = {"train": f"1. training {args.model}, batch {args.batch}, {args.steps} timed steps after {args.warmup}",
              "sweep": f"2. sweep {args.model} at {args.sweep} (crop 0.875), batch {args.eval_batch}",
              "pixels": "3. parity: pixels", "top1": "3. parity: top-1 of one checkpoint through every pipeline",
              "compile": f"4. synthetic training step of {args.model}, eager and compiled, batch {args.batch} and "
                         f"{args.large_batch}, {args.compile_steps} timed steps"}
    for name in wanted:
        log(f"\n{titles[name]}")
        t0 = time.perf_counter()
        try:        # one section failing (a driver quirk, say) must not lose the others' figures
            report[name] = sections[name]()
        except Exception as e:  # noqa: BLE001 - reported in full, the run goes on
            traceback.print_exc()
            report[name] = {"error": f"{type(e).__name__}: {e}"}
        report["section_seconds"][name] = round(time.perf_counter() - t0, 1)
        report["seconds"] = round(time.perf_counter() - t_start, 1)
        if args.json:   # after every section: a run cut short still returns what it measured
            Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    log(f"\ntotal {round(time.perf_counter() - t_start, 1)}s  (sections: {report['section_seconds']})")
    if any("error" in v for v in report.values() if isinstance(v, dict)):
        sys.exit(1)


if __name__ == "__main__":
    main()
