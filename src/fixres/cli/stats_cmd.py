"""``fixres stats``: the pooled features (the classifier's input) against test resolution."""
from __future__ import annotations

from ..core.options import add_arguments, build, from_namespace
from ..core.rundir import prepare_output_files
from ..measure.stats import STATS_FILES, StatsOptions, feature_stats
from ..measure.stats_report import stats_json, stats_table, write_stats
from ..models.sources import declared_preprocessing
from .common import add_model_source, model_source, report


def register(sub) -> None:
    p = sub.add_parser("stats", help="why adaptation is needed: pooled-feature statistics against test resolution",
                       description="Measure the distribution of the pooled features (post-ReLU, averaged: the "
                                   "classifier's input) at each test resolution and compare it with the train-time "
                                   "one (RandomResizedCrop at the checkpoint's train resolution, with its recorded "
                                   "crop settings), as in figure 3 of the FixRes paper. --compare adds adapted "
                                   "checkpoints, measured on the same images.")
    add_model_source(p)
    p.add_argument("--data", required=True, help="dataset directory holding --split")
    add_arguments(p, StatsOptions)
    p.add_argument("--compare", nargs="+", default=[], metavar="CKPT",
                   help="further checkpoints (e.g. `fixres adapt` outputs) measured on the same images")
    p.add_argument("--train-res-reference", action="store_true",
                   help="also measure the TEST preprocessing at the checkpoint's train resolution (added to "
                        "--test-res), to separate the preprocessing change from the resolution change")
    p.add_argument("--out", default=None, help="directory for stats.csv, stats.json, stats-cdf.png, stats-vs-res.png")
    p.add_argument("--overwrite", action="store_true", help="replace stats files already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=run)


def run(args) -> int:
    source = model_source(args)
    resolutions = list(args.test_res)
    if args.train_res_reference:
        resolutions.append(source.train_res or declared_preprocessing(source).train_res)   # no weights loaded
    opts = build(StatsOptions, {**from_namespace(args, StatsOptions), "test_res": resolutions})
    if args.out:
        prepare_output_files(args.out, STATS_FILES, overwrite=args.overwrite, keep=False)
    result = feature_stats(source, args.data, opts, compare=args.compare, quiet=args.quiet)
    return report(args, result, as_json=stats_json, as_table=stats_table, write=write_stats)
