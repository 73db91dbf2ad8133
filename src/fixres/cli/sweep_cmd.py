"""``fixres sweep``: accuracy against test resolution, in one pass over the data."""
from __future__ import annotations

from ..config import add_arguments, build, from_namespace
from ..data.transforms import parse_resolutions
from ..rundir import prepare_output_files
from ..runtime import init_distributed
from ..sweep import SweepOptions, sweep_checkpoint
from ..sweep_report import SWEEP_FILES, sweep_json, sweep_table, write_sweep
from .common import add_model_source, model_source, print_json


def register(sub) -> None:
    p = sub.add_parser("sweep", help="accuracy against test resolution (one pass over the data)",
                       description="Evaluate a checkpoint at several test resolutions (and crop_pcts) in one pass: "
                                   "each image is decoded once and resized to every geometry exactly as "
                                   "`fixres eval` does. The best resolution is chosen on held-out training images "
                                   "(or a training sample), then reported on --split. Under torchrun every process "
                                   "takes a shard; rank 0 prints and writes.")
    add_model_source(p)
    p.add_argument("--data", required=True, help="dataset directory holding train/ and the reported split")
    add_arguments(p, SweepOptions)
    p.add_argument("--out", default=None, help="directory to write sweep.csv, sweep.json and sweep.png into")
    p.add_argument("--overwrite", action="store_true", help="replace sweep files already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=run)


def run(args) -> int:
    source = model_source(args)
    values = from_namespace(args, SweepOptions)
    values["test_res"] = parse_resolutions(args.test_res)
    opts = build(SweepOptions, values)                   # validated before loading anything
    dist_env = init_distributed(opts.device)
    if args.out and dist_env.is_main:
        prepare_output_files(args.out, SWEEP_FILES, overwrite=args.overwrite, keep=False)
    result = sweep_checkpoint(source, args.data, opts, quiet=args.quiet, dist_env=dist_env)
    if not dist_env.is_main:
        return 0
    written = write_sweep(result, args.out, overwrite=args.overwrite) if args.out else []
    if args.json:
        print_json(sweep_json(result))
    else:
        print(sweep_table(result))
        if written:
            print("wrote " + ", ".join(str(p) for p in written))
    return 0
