"""``fixres stats``: the pooled features (the classifier's input) against test resolution."""
from __future__ import annotations

from ..core.options import add_arguments, build, from_namespace
from ..core.rundir import prepare_output_files
from ..measure.stats import STATS_FILES, StatsOptions, feature_stats
from ..measure.stats_report import stats_json, stats_table, write_stats
from ..models.sources import declared_preprocessing
from .common import add_model_source, add_output_flags, command, finish, model_source


def register(sub) -> None:
    p = command(sub, "stats", "why adaptation is needed: pooled-feature statistics against test resolution", """
        Measure the distribution of the pooled features (post-ReLU, averaged: the classifier's input) at
        each test resolution and compare it with the train-time one (RandomResizedCrop at the
        checkpoint's train resolution, with its recorded crop settings), as in figure 3 of the FixRes
        paper. --compare adds adapted checkpoints, measured on the same images.
    """)
    add_model_source(p)
    p.add_argument("--data", required=True, help="dataset directory holding --split")
    add_arguments(p, StatsOptions)
    p.add_argument("--compare", nargs="+", default=[], metavar="CKPT",
                   help="further checkpoints (e.g. `fixres adapt` outputs) measured on the same images")
    p.add_argument("--train-res-reference", action="store_true",
                   help="also measure the TEST preprocessing at the checkpoint's train resolution (added to "
                        "--test-res), to separate the preprocessing change from the resolution change")
    add_output_flags(p, out="folder to write stats.csv, stats.json, stats-cdf.png and stats-vs-res.png into, as one "
                            "unit", overwrite="replace the stats already in --out")
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
    return finish(args, result, as_json=stats_json, as_text=stats_table, write=write_stats)
