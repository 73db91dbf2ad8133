"""``fixres eval``: top-1/top-5/loss of a checkpoint at one test resolution."""
from __future__ import annotations

from ..core.options import add_arguments, build, from_namespace
from ..core.runtime import init_distributed
from ..measure.infer import EvalOptions, evaluate_checkpoint
from .common import add_model_source, model_source, print_json


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint at a test resolution",
                       description="Evaluate a checkpoint on DIR/<split>: resize the shorter side to "
                                   "floor(test_res / crop_pct), centre-crop test_res. Defaults are what the "
                                   "checkpoint records (an adapted checkpoint records its adapted resolution).")
    add_model_source(p)
    p.add_argument("--data", required=True, help="dataset directory holding the split")
    add_arguments(p, EvalOptions)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=run)


def run(args) -> int:
    source = model_source(args)
    opts = build(EvalOptions, from_namespace(args, EvalOptions))    # validated before loading anything
    dist_env = init_distributed(opts.device)  # under torchrun: every rank evaluates a shard
    result, meta, skipped = evaluate_checkpoint(source, args.data, opts, quiet=args.quiet, dist_env=dist_env)
    if not dist_env.is_main:
        return 0
    row = {"checkpoint": str(source.checkpoint or source.model), "model": meta.model, "split": opts.split,
           "classes": meta.num_classes, "labels": meta.label_source or "the checkpoint's classes", **result.row()}
    if args.json:
        print_json({**row, "skipped_files": [{"path": p, "reason": r} for p, r in skipped]})
        return 0
    print(f"{meta.model} on {args.data}/{opts.split} at {result.test_res}px (crop_pct {result.crop_pct:g}, "
          f"{result.interpolation}{', ' + result.crop_mode if result.crop_mode != 'center' else ''}), "
          f"{meta.num_classes} classes ({row['labels']}): top-1 {result.top1:.2f}  top-5 {result.top5:.2f}  loss {result.loss:.4f}  "
          f"images {result.n}" + (f"  skipped {result.n_skipped}" if result.n_skipped else ""))
    return 0
