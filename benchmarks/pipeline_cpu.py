"""The fast data pipeline against the usual PyTorch one and against no data loading at all, on the CPU.

Generates its own data (photo-like JPEGs, 500x375 / 375x500 / 500x333, ~95 KB, 10
classes), packs it (original bytes, and a copy with the shorter side at most --max-size),
then measures in one run, with the same number of loader workers everywhere:

1. loaders alone (no model): images/s of torchvision (ImageFolder + PIL + RandomResizedCrop
   + flip + ToTensor + Normalize), fixres ``pil``, fixres ``fast`` (reduced-size JPEG
   decoding in the workers) on the folder and on the stores, and the ``device`` decoder run
   on the CPU (the GPU code path; slow here, shown for completeness);
2. training (each --train MODEL@RES, SGD, batch --batch, compute threads = cores - workers):
   images/s fed by synthetic uint8 tensors already in memory (the ceiling), by ``fast``
   (both stores) and by torchvision; ratios. ``test_resnet`` at 32 px is a model faster than any
   loader here: the regime of a GPU, where the pipeline decides the speed;
3. a sweep (inference at --sweep resolutions from one decode per image): the same three.

    python benchmarks/pipeline_cpu.py [--workers N] [--train resnet10t@64 ...] [--json out.json]

About 2-3 minutes on 2 shared cores. Not a test: it asserts nothing, it prints figures.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import Stepper, cores, cycle, make_photos, timed_steps, torchvision_loader  # noqa: E402

from fixres.core.runtime import Runtime  # noqa: E402
from fixres.data import scan_split  # noqa: E402
from fixres.data.loader import TrainBatches, default_workers  # noqa: E402
from fixres.data.packer import PackOptions, pack  # noqa: E402
from fixres.data.pipeline import sweep_batches, train_batches  # noqa: E402
from fixres.data.transforms import EvalTransform, Normalizer, TrainTransform  # noqa: E402
from fixres.models import create_model  # noqa: E402
from fixres.models.checkpoint import versions  # noqa: E402

CPU = torch.device("cpu")


def loader_rate(batches, images: int) -> float:
    it, seen = iter(cycle(lambda: batches)), 0
    first = next(it)                        # start-up (worker processes, first batch) not timed
    t0 = time.perf_counter()
    while seen < images:
        b = next(it)
        seen += len(b[1]) if isinstance(b, (list, tuple)) and not hasattr(b, "images") else len(b.labels)
    return seen / (time.perf_counter() - t0) if first is not None else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=default_workers())
    p.add_argument("--train", nargs="+", default=["resnet10t@64", "resnet10t@96", "test_resnet@32"],
                   metavar="MODEL@RES", help="training configurations (test_resnet: a model faster than the loaders, "
                                             "the regime of a GPU)")
    p.add_argument("--model", default="resnet10t", help="model of the sweep")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="timed training steps per configuration")
    p.add_argument("--sweep", type=int, nargs="+", default=[64, 96, 128])
    p.add_argument("--sweep-images", type=int, default=256)
    p.add_argument("--rounds", type=int, default=2, help="alternating repetitions; each figure is its best")
    p.add_argument("--max-size", type=int, default=160, help="shorter side of the resized store")
    p.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "fixres-bench-cpu"))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    W, rows = args.workers, {}
    torch.set_num_threads(max(1, cores() - W))    # the loader workers get the other cores
    root = Path(args.data)
    print(f"fixres pipeline benchmark, CPU: {platform.processor() or platform.machine()}, {cores()} cores, "
          f"{W} loader worker(s), {torch.get_num_threads()} compute threads, torch {torch.__version__}", flush=True)
    info = make_photos(root / "photos", classes=10, per_class=60, unique=120, workers=cores())
    print(f"data: {info}", flush=True)
    stores = {}
    for name, opts in (("store", PackOptions(workers=cores())),
                       (f"store-max{args.max_size}", PackOptions(workers=cores(), max_size=args.max_size))):
        t0 = time.perf_counter()
        summary = pack(root / "photos", root / name, opts, progress=False)[0]
        stores[name] = scan_split(root / name)
        print(f"pack {name}: {summary.samples} images, {summary.stored_bytes / 2**20:.1f} MB "
              f"({time.perf_counter() - t0:.1f}s)", flush=True)
    folder = scan_split(root / "photos")
    n = len(folder)

    # 1. loaders alone ------------------------------------------------------------------
    res0 = int(args.train[0].split("@")[1])
    tf = TrainTransform(res0)
    sampler = TrainBatches(n, args.batch, seed=0)
    pil, fast = Runtime(CPU, pipeline="pil", workers=W), Runtime(CPU, pipeline="fast", workers=W)
    loaders = {
        "torchvision": lambda: torchvision_loader(root / "photos", res0, batch_size=args.batch, workers=W,
                                                  pin_memory=False),
        "fixres pil (folder)": lambda: train_batches(folder, tf, sampler, pil),
        "fast (folder)": lambda: train_batches(folder, tf, sampler, fast),
        "fast (store)": lambda: train_batches(stores["store"], tf, sampler, fast),
        f"fast (store-max{args.max_size})": lambda: train_batches(stores[f"store-max{args.max_size}"], tf, sampler,
                                                                  fast),
        "fast device decoder on CPU (store)": lambda: train_batches(stores["store"], tf, sampler, fast,
                                                                    decoder="device"),
    }
    print(f"\n1. loaders alone, train preprocessing at {res0}px, batch {args.batch}, {W} worker(s): images/s")
    rates = {}
    for name, make in loaders.items():
        rates[name] = loader_rate(make(), (2 if "device decoder" in name else 6) * args.batch)
        print(f"  {name:40s} {rates[name]:8.0f}   x{rates[name] / rates['torchvision']:.2f} vs torchvision", flush=True)
    rows["loaders"] = rates

    # 2. training ------------------------------------------------------------------------
    print(f"\n2. training, batch {args.batch}, {args.steps} timed steps, best of {args.rounds} alternating rounds, "
          f"{torch.get_num_threads()} compute thread(s): images/s")
    rows["train"] = {}
    max_store = f"store-max{args.max_size}"
    for spec in args.train:
        model_name, res = spec.split("@")[0], int(spec.split("@")[1])
        tf = TrainTransform(res)
        feeds = {
            "synthetic tensors": None,
            "fast (store)": lambda: train_batches(stores["store"], tf, sampler, fast),
            f"fast ({max_store})": lambda: train_batches(stores[max_store], tf, sampler, fast),
            "torchvision": lambda: torchvision_loader(root / "photos", res, batch_size=args.batch, workers=W,
                                                      pin_memory=False),
        }
        got = {name: 0.0 for name in feeds}
        for _ in range(args.rounds):      # a shared machine's load drifts: alternate, keep each feed's best
            for name, make in feeds.items():
                torch.manual_seed(0)
                step = Stepper(create_model(model_name, 10), CPU, channels_last=False)
                if make is None:
                    x = torch.randint(0, 256, (args.batch, 3, res, res), dtype=torch.uint8)
                    y = torch.randint(0, 10, (args.batch,))
                    batches = iter(lambda: (x, y), None)
                else:
                    batches = cycle(make)
                got[name] = max(got[name], timed_steps(step, batches, warmup=2, steps=args.steps, sync=step.sync,
                                                       normalised=name == "torchvision"))
        syn, tv = got["synthetic tensors"], got["torchvision"]
        for name, rate in got.items():
            print(f"  {model_name:11s} {res:3d}px {name:22s} {rate:7.1f}   {rate / syn:.2f} of synthetic   "
                  f"x{rate / tv:.2f} vs torchvision", flush=True)
        rows["train"][spec] = got

    # 3. sweep ---------------------------------------------------------------------------
    geometries = [(r, 0.875) for r in args.sweep]
    views = [EvalTransform(r, c) for r, c in geometries]
    m = min(n, args.sweep_images)
    sub = {name: type(split)(split.root, split.classes, split.samples[:m], [])
           for name, split in (("folder", folder), ("store", stores["store"]))}
    print(f"\n3. sweep {args.model} at {args.sweep} (crop 0.875), {m} images, batch {args.batch}, best of "
          f"{args.rounds}: images/s (each image evaluated at every resolution; loader start-up included)")
    torch.manual_seed(0)
    model = create_model(args.model, 10).eval()
    prep = Normalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    sweeps = {
        "synthetic tensors": None,
        "fast (store)": lambda: sweep_batches(sub["store"], views, fast, batch_size=args.batch),
        "fast, draft (store)": lambda: sweep_batches(sub["store"], views, fast, batch_size=args.batch, draft=True),
        "fixres pil sweep (folder)": lambda: sweep_batches(sub["folder"], views, pil, batch_size=args.batch),
    }
    got = {name: 0.0 for name in sweeps}
    xs = [torch.randint(0, 256, (args.batch, 3, r, r), dtype=torch.uint8) for r, _ in geometries]
    for _ in range(args.rounds):
        for name, make in sweeps.items():
            with torch.no_grad():
                t0, seen = time.perf_counter(), 0
                for b in (make() if make else (type("B", (), {"images": xs, "labels": xs[0]})
                                               for _ in range(0, m, args.batch))):
                    for x in b.images:
                        model(prep(x, CPU))
                    seen += len(b.labels)
                got[name] = max(got[name], seen / (time.perf_counter() - t0))
    for name, rate in got.items():
        print(f"  {name:28s} {rate:7.1f}   {rate / got['synthetic tensors']:.2f} of synthetic   "
              f"x{rate / got['fixres pil sweep (folder)']:.2f} vs pil", flush=True)
    rows["sweep"] = got
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "workers": W, "cores": cores(), "data": info,
                                               "versions": versions(), "date": time.strftime("%Y-%m-%d")}, indent=1))


if __name__ == "__main__":
    main()
