"""``fixres adapt``: adapt a checkpoint to a test resolution (FixRes fine-tuning and cheaper variants)."""
from __future__ import annotations

from ..adapt import AdaptOptions, AdaptResult, adapt_checkpoint
from ..core.options import add_arguments, build, from_namespace
from ..core.runtime import init_distributed
from .common import add_model_source, add_output_flags, command, finish, model_source


def register(sub) -> None:
    p = command(sub, "adapt", "adapt a checkpoint to a higher test resolution", """
        Adapt a checkpoint to --test-res on the TRAINING images of --data with the test preprocessing
        (never its held-out or val images), measure val accuracy at --test-res before and after, and
        write a checkpoint directory whose default test resolution is --test-res. See docs/adapt.md.
    """)
    add_model_source(p)
    p.add_argument("--data", required=True, help="dataset directory with train/ and val/")
    add_arguments(p, AdaptOptions)
    add_output_flags(p, out="checkpoint directory to write (must not exist or be empty)", out_required=True,
                     overwrite="replace the fixres checkpoint already in --out",
                     quiet="no progress bars and no per-epoch lines", json="print the adaptation report as JSON")
    p.set_defaults(handler=run)


def run(args) -> int:
    source = model_source(args)
    opts = build(AdaptOptions, from_namespace(args, AdaptOptions))
    dist_env = init_distributed(opts.device)  # under torchrun: the passes over the images are shared
    result = adapt_checkpoint(source, args.data, opts, out=args.out, overwrite=args.overwrite,
                              quiet=args.quiet, dist_env=dist_env)
    if not dist_env.is_main:
        return 0
    return finish(args, result, as_json=AdaptResult.record, as_text=AdaptResult.text)
