"""``fixres eval``: top-1/top-5/loss of a checkpoint at one test resolution."""
from __future__ import annotations

from ..data.transforms import eval_geometry
from ..evaluate import evaluate_checkpoint
from ..runtime import init_distributed
from .common import add_runtime_flags, print_json


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint at a test resolution",
                       description="Evaluate a checkpoint on DIR/<split>: resize the shorter side to "
                                   "floor(test_res / crop_pct), centre-crop test_res. Defaults are what the "
                                   "checkpoint records (an adapted checkpoint records its adapted resolution).")
    p.add_argument("--checkpoint", required=True, help="run directory (its best checkpoint), checkpoint directory or "
                                                       "model.safetensors file")
    p.add_argument("--data", required=True, help="dataset directory holding the split")
    p.add_argument("--split", default="val", help="sub-directory to evaluate (default: val)")
    p.add_argument("--test-res", type=int, default=None, help="test resolution (default: the checkpoint's)")
    p.add_argument("--crop-pct", type=float, default=None, help="centre-crop fraction (default: the checkpoint's)")
    p.add_argument("--interpolation", choices=("bilinear", "bicubic"), default=None,
                   help="resize filter (default: the checkpoint's)")
    add_runtime_flags(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=run)


def run(args) -> int:
    if args.test_res is not None or args.crop_pct is not None:  # validate before loading anything
        eval_geometry(224 if args.test_res is None else args.test_res, 0.875 if args.crop_pct is None else args.crop_pct)
    dist_env = init_distributed(args.device)  # under torchrun: every rank evaluates a shard
    result, meta, skipped = evaluate_checkpoint(
        args.checkpoint, args.data, split=args.split, test_res=args.test_res, crop_pct=args.crop_pct,
        interpolation=args.interpolation, batch_size=args.batch_size, workers=args.workers, device=args.device,
        quiet=args.quiet, dist_env=dist_env)
    if not dist_env.is_main:
        return 0
    row = {"checkpoint": str(args.checkpoint), "model": meta.model, "split": args.split, **result.row()}
    if args.json:
        print_json({**row, "skipped_files": [{"path": p, "reason": r} for p, r in skipped]})
        return 0
    print(f"{meta.model} on {args.data}/{args.split} at {result.test_res}px (crop_pct {result.crop_pct:g}, "
          f"{result.interpolation}): top-1 {result.top1:.2f}  top-5 {result.top5:.2f}  loss {result.loss:.4f}  "
          f"images {result.n}" + (f"  skipped {result.n_skipped}" if result.n_skipped else ""))
    return 0
