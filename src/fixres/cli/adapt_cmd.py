"""``fixres adapt``: adapt a checkpoint to a test resolution (FixRes fine-tuning and cheaper variants)."""
from __future__ import annotations

from ..adapt import AdaptOptions, adapt_checkpoint
from ..core.options import add_arguments, build, from_namespace
from ..core.runtime import init_distributed
from .common import add_model_source, model_source, print_json


def register(sub) -> None:
    p = sub.add_parser("adapt", help="adapt a checkpoint to a higher test resolution",
                       description="Adapt a checkpoint to --test-res on the TRAINING images of --data with the test "
                                   "preprocessing (never its held-out or val images), measure val accuracy at "
                                   "--test-res before and after, and write a checkpoint directory whose default test "
                                   "resolution is --test-res. See docs/adapt.md.")
    add_model_source(p)
    p.add_argument("--data", required=True, help="dataset directory with train/ and val/")
    p.add_argument("--out", required=True, help="checkpoint directory to write (must not exist or be empty)")
    add_arguments(p, AdaptOptions)
    p.add_argument("--overwrite", action="store_true", help="replace the fixres checkpoint already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no per-epoch lines")
    p.add_argument("--json", action="store_true", help="print the adaptation report as JSON")
    p.set_defaults(handler=run)


def run(args) -> int:
    source = model_source(args)
    opts = build(AdaptOptions, from_namespace(args, AdaptOptions))
    dist_env = init_distributed(opts.device)  # under torchrun: the passes over the images are shared
    result = adapt_checkpoint(source, args.data, opts, out=args.out, overwrite=args.overwrite,
                              quiet=args.quiet, dist_env=dist_env)
    if not dist_env.is_main:
        return 0
    r = result.report
    if args.json:
        print_json({**r, "checkpoint": str(result.out), "weights_sha256": result.meta.weights_sha256})
        return 0
    how = f"{r['execution']}, {r['epochs']} epochs, " if r["epochs"] else f"{r['execution']}, "
    print(f"{result.meta.model} adapted to {r['test_res']}px with {r['method']} ({how}{r['images']['used']} images) "
          f"in {r['seconds']['total']:.1f}s: val top-1 {r['before']['top1']:.2f} -> {r['after']['top1']:.2f}, "
          f"top-5 {r['before']['top5']:.2f} -> {r['after']['top5']:.2f} ({r['after']['n']} images); "
          f"checkpoint: {result.out}")
    return 0
