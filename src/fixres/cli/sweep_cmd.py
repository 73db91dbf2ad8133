"""``fixres sweep``: accuracy against test resolution, in one pass over the data."""
from __future__ import annotations

from ..runtime import init_distributed
from ..sweep import SELECT_ON, check_geometries, check_out_dir, parse_resolutions, sweep_checkpoint
from .common import add_runtime_flags, add_test_res_list, print_json


def register(sub) -> None:
    p = sub.add_parser("sweep", help="accuracy against test resolution (one pass over the data)",
                       description="Evaluate a checkpoint at several test resolutions (and crop_pcts) in one pass: "
                                   "each image is decoded once and resized to every geometry exactly as "
                                   "`fixres eval` does. The best resolution is chosen on held-out training images "
                                   "(or a training sample), then reported on --split. Under torchrun every process "
                                   "takes a shard; rank 0 prints and writes.")
    p.add_argument("--checkpoint", required=True, help="run directory (its best checkpoint), checkpoint directory or "
                                                       "model.safetensors file")
    p.add_argument("--data", required=True, help="dataset directory holding train/ and the reported split")
    add_test_res_list(p)
    p.add_argument("--crop-pct", nargs="+", type=float, default=None, metavar="PCT",
                   help="centre-crop fractions; every (test_res, crop_pct) pair is swept (default: the checkpoint's)")
    p.add_argument("--select-on", choices=SELECT_ON, default=None,
                   help="images that choose the best resolution: holdout (training images held out by "
                        "`fixres train --holdout`), train (a sample of the training split, seen in training), "
                        "val (the reported split itself: optimistic) or none (default: holdout if the checkpoint "
                        "records one, else train)")
    p.add_argument("--select-images", type=int, default=50,
                   help="--select-on train: images per class of the training sample (default: 50)")
    p.add_argument("--split", default="val", help="sub-directory the accuracy is reported on (default: val)")
    p.add_argument("--interpolation", choices=("bilinear", "bicubic"), default=None,
                   help="resize filter (default: the checkpoint's)")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto",
                   help="mixed precision on a GPU (default: auto = bf16 where supported; always none on CPU)")
    p.add_argument("--out", default=None, help="directory to write sweep.csv, sweep.json and sweep.png into")
    p.add_argument("--overwrite", action="store_true", help="replace sweep files already in --out")
    add_runtime_flags(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=run)


def run(args) -> int:
    test_res = parse_resolutions(args.test_res)          # validate everything before loading anything
    check_geometries(test_res, args.crop_pct or [0.875])
    if args.out:
        check_out_dir(args.out, args.overwrite)
    dist_env = init_distributed(args.device)
    result = sweep_checkpoint(
        args.checkpoint, args.data, test_res=test_res, crop_pcts=args.crop_pct, select_on=args.select_on,
        split=args.split, select_images=args.select_images, interpolation=args.interpolation,
        batch_size=args.batch_size, workers=args.workers, device=args.device, amp=args.amp, dist_env=dist_env,
        quiet=args.quiet)
    if not dist_env.is_main:
        return 0
    written = result.write(args.out, overwrite=args.overwrite) if args.out else []
    if args.json:
        print_json(result.to_json())
    else:
        print(result.table())
        if written:
            print("wrote " + ", ".join(str(p) for p in written))
    return 0
