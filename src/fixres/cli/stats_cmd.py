"""``fixres stats``: the pooled features (the classifier's input) against test resolution."""
from __future__ import annotations

from ..checkpoint import read_meta
from ..stats import check_out_dir, feature_stats
from ..sweep import parse_resolutions
from .common import add_runtime_flags, add_test_res_list, print_json


def register(sub) -> None:
    p = sub.add_parser("stats", help="why adaptation is needed: pooled-feature statistics against test resolution",
                       description="Measure the distribution of the pooled features (post-ReLU, averaged: the "
                                   "classifier's input) at each test resolution and compare it with the train-time "
                                   "one (RandomResizedCrop at the checkpoint's train resolution), as in figure 3 of "
                                   "the FixRes paper. --compare adds adapted checkpoints, measured on the same images.")
    p.add_argument("--checkpoint", required=True, help="run directory, checkpoint directory or model.safetensors; "
                                                       "its train-time distribution is the reference")
    p.add_argument("--data", required=True, help="dataset directory holding --split")
    add_test_res_list(p)
    p.add_argument("--compare", nargs="+", default=[], metavar="CKPT",
                   help="further checkpoints (e.g. `fixres adapt` outputs) measured on the same images")
    p.add_argument("--split", default="val", help="sub-directory the images come from (default: val)")
    p.add_argument("--images", type=int, default=500,
                   help="images of --split: a class-balanced sample fixed by --seed, all if fewer (default: 500)")
    p.add_argument("--reference-split", default=None,
                   help="images of the train-time reference (default: the same images; `train` samples the "
                        "images the checkpoint was trained on)")
    p.add_argument("--train-res-reference", action="store_true",
                   help="also measure the TEST preprocessing at the checkpoint's train resolution (added to "
                        "--test-res), to separate the preprocessing change from the resolution change")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and of the RandomResizedCrop draws")
    p.add_argument("--out", default=None, help="directory for stats.csv, stats.json, stats-cdf.png, stats-vs-res.png")
    p.add_argument("--overwrite", action="store_true", help="replace stats files already in --out")
    add_runtime_flags(p, batch_size=50)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=run)


def run(args) -> int:
    resolutions = list(args.test_res)
    if args.train_res_reference:
        resolutions.append(read_meta(args.checkpoint).train_res)
    test_res = parse_resolutions(resolutions)
    if args.out:
        check_out_dir(args.out, args.overwrite)
    result = feature_stats(args.checkpoint, args.data, test_res=test_res, split=args.split, images=args.images,
                           compare=args.compare, reference_split=args.reference_split, seed=args.seed,
                           batch_size=args.batch_size, workers=args.workers, device=args.device, quiet=args.quiet)
    written = result.write(args.out, overwrite=args.overwrite) if args.out else []
    if args.json:
        print_json(result.to_json())
    else:
        print(result.table())
        if written:
            print("wrote " + ", ".join(str(p) for p in written))
    return 0
