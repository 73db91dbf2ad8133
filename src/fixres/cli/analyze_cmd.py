"""``fixres analyze``: the geometric prediction of the test resolution (apparent object size)."""
from __future__ import annotations

from ..analyze import STATISTICS
from ..analyze.geometry import check_statistic
from ..analyze.report import CropSettings, analysis_json, analysis_text, analyze
from ..core.rundir import prepare_output_file
from ..models.sources import ModelSource
from .common import add_output_flags, command, finish


def register(sub) -> None:
    p = command(sub, "analyze", "predict the test resolution that matches the apparent object size", """
        Predict the test resolution at which objects look as large to the network as during
        RandomResizedCrop training (FixRes section 3), from the closed form (square images), or by
        simulating torchvision's exact sampler over the dataset's image sizes (--data) or given sizes
        (--sizes). Geometric prediction only: `fixres sweep` measures the real optimum.
    """)
    model = p.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", metavar="PATH", help="read the training settings a fixres checkpoint records")
    model.add_argument("--model", metavar="NAME", help="read the settings a timm model declares (its pretrained "
                                                       "config: input_size is its training resolution; its training "
                                                       "crops are not recorded, the defaults are assumed)")
    p.add_argument("--train-res", type=int, metavar="K",
                   help="training resolution (pixels; default: the model's); for a progressive-resizing run the FINAL "
                        "one (its checkpoint's train_res)")
    p.add_argument("--scale", type=float, nargs=2, metavar=("A", "B"),
                   help="RandomResizedCrop area-fraction range (default: the checkpoint's, else 0.08 1)")
    p.add_argument("--ratio", type=float, nargs=2, metavar=("A", "B"),
                   help="RandomResizedCrop aspect-ratio range (default: the checkpoint's, else 0.75 1.333)")
    p.add_argument("--crop-pct", type=float,
                   help="test centre-crop fraction: resize to floor(K_test / crop_pct) (default: the model's, "
                        "else 0.875)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="DIR", help="dataset directory (reads DIR/train) or a split / image folder")
    src.add_argument("--sizes", nargs="+", metavar="WxH", help="image sizes, e.g. 500x375 500x333")
    p.add_argument("--statistic", default="mean-ratio", metavar="|".join(STATISTICS),
                   help="what to match: mean-ratio E[z_test/z_train]=1 (default), geometric E[ln]=0, "
                        "mean-size E[z_train/z_test]=1")
    p.add_argument("--samples", type=int, default=200_000, help="Monte-Carlo draws (default: 200000)")
    p.add_argument("--seed", type=int, default=0, help="Monte-Carlo seed (default: 0)")
    p.add_argument("--plot", metavar="FILE.png", help="write the apparent-size histogram to this image file")
    add_output_flags(p, quiet=None, json="print machine-readable JSON")
    p.set_defaults(handler=run)


def run(args) -> int:
    check_statistic(args.statistic)
    if args.plot:
        prepare_output_file(args.plot)
    source = ModelSource(checkpoint=args.checkpoint, model=args.model) if args.checkpoint or args.model else None
    settings = CropSettings.resolve(source, train_res=args.train_res, scale=args.scale, ratio=args.ratio,
                                    crop_pct=args.crop_pct)
    result = analyze(settings, data=args.data, sizes=args.sizes, statistic=args.statistic, samples=args.samples,
                     seed=args.seed, plot=args.plot, from_model=source is not None)
    return finish(args, result, as_json=analysis_json, as_text=analysis_text)
