"""Where the GPU decoder's training feed spends its time, stage by stage (no model):

1. the DataLoader alone (workers read the packed store, draw crop boxes, collate encoded bytes);
2. ``decode_jpeg`` on the GPU alone, batched, on batches already in memory;
3. the device finisher alone (decode + batched crop/resize/flip) on batches in memory;
4. the whole feed (``train_batches(..., decoder="device")``), as training consumes it.

    python benchmarks/gpu_stages.py [--res 128] [--batch 256]     # on a CUDA machine, ~1 minute
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import cores, make_photos  # noqa: E402

from fixres.core.runtime import Runtime  # noqa: E402
from fixres.data import scan_split  # noqa: E402
from fixres.data.fast import decode_on_device  # noqa: E402
from fixres.data.loader import TrainBatches, default_workers  # noqa: E402
from fixres.data.packer import PackOptions, pack  # noqa: E402
from fixres.data.pipeline import DeviceFinisher, train_batches  # noqa: E402
from fixres.data.transforms import TrainTransform  # noqa: E402


def rate(batches, n: int, sync) -> float:
    it = iter(batches)
    for b in itertools.islice(it, 3):           # start-up: workers, cuDNN, allocator
        pass
    sync()
    t0, seen = time.perf_counter(), 0
    for b in itertools.islice(it, n):
        seen += len(b.items) if hasattr(b, "items") else len(b.labels)
    sync()
    return seen / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--workers", type=int, default=default_workers())
    p.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "fixres-bench-gpu"))
    args = p.parse_args()
    device, work = torch.device(args.device), Path(args.data)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    make_photos(work / "photos", classes=100, per_class=120, unique=3000, workers=cores())
    if not (work / "store").is_dir():
        pack(work / "photos", work / "store", PackOptions(), progress=False)
    split, tf = scan_split(work / "store"), TrainTransform(args.res)
    feed = train_batches(split, tf, TrainBatches(len(split), args.batch, seed=0),
                         Runtime(device, pipeline="fast", workers=args.workers), decoder="device")
    print(f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, {args.workers} workers, "
          f"batch {args.batch}, {args.res}px, torch {torch.__version__}")
    print(f"1. DataLoader alone (encoded batches)     {rate(feed.loader, args.batches, sync):8.0f} img/s")
    raw = list(itertools.islice(iter(feed.loader), 8))
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
        out = decode_jpeg([raw[0].blob[o:o + n] for _, o, n in raw[0].spans], mode=ImageReadMode.RGB, device=device)
        print(f"   batched decode_jpeg: ok, {len(out)} images")
    except Exception as e:  # noqa: BLE001 - the point is to see it
        print(f"   batched decode_jpeg FAILED ({type(e).__name__}: {e}); decode_on_device falls back to one by one")

    class Decoded:
        def __iter__(self):
            for b in itertools.cycle(raw):
                decode_on_device([b.blob[o:o + n] for _, o, n in b.spans], device)
                yield b
    print(f"2. decode_jpeg on the device alone        {rate(Decoded(), args.batches, sync):8.0f} img/s")
    finish = DeviceFinisher(tf, device)
    print(f"3. finisher (decode + crops) alone        "
          f"{rate((finish(b) for b in itertools.cycle(raw)), args.batches, sync):8.0f} img/s")
    print(f"4. whole feed (loader + finisher)         {rate(feed, args.batches, sync):8.0f} img/s   "
          f"{feed.stats.row()}")


if __name__ == "__main__":
    main()
