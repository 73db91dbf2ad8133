"""``fixres analyze``: the geometric prediction of the test resolution (apparent object size)."""
from __future__ import annotations

from ..analyze import (
    GEOMETRIC_NOTE,
    STATISTICS,
    compare_statistics,
    parse_size,
    plot_apparent_size,
    scan_sizes,
    sensitivity,
)
from ..analyze.geometry import check_statistic
from ..analyze.sizes import split_dir
from ..core.errors import FixresError
from ..core.rundir import prepare_output_file
from ..data.preprocessing import Preprocessing
from ..data.transforms import check_resolution
from ..models.sources import ModelSource, declared_preprocessing
from .common import print_json, table

MEAN_NAME = {"mean-ratio": "mean", "geometric": "geometric mean", "mean-size": "harmonic mean"}


def register(sub) -> None:
    p = sub.add_parser("analyze", help="predict the test resolution that matches the apparent object size",
                       description="Predict the test resolution at which objects look as large to the network as "
                                   "during RandomResizedCrop training (FixRes section 3), from the closed form "
                                   "(square images), or by simulating torchvision's exact sampler over the "
                                   "dataset's image sizes (--data) or given sizes (--sizes). Geometric prediction "
                                   "only: `fixres sweep` measures the real optimum.")
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
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(handler=run)


def settings(args) -> Preprocessing:
    """The training crops and test crop fraction: the model's (its record or declaration), each
    overridden by a flag; without a model, the flags (``--train-res`` required) and defaults."""
    if args.train_res is not None:
        check_resolution(args.train_res, "train resolution")
    if args.checkpoint or args.model:
        prep = declared_preprocessing(ModelSource(checkpoint=args.checkpoint, model=args.model))
    elif args.train_res is None:
        raise FixresError("give --train-res K, or the model: --checkpoint PATH or --model NAME")
    else:
        prep = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, train_res=args.train_res)   # mean/std unused here
    return prep.override("flag", train_res=args.train_res, scale=args.scale and tuple(args.scale),
                         ratio=args.ratio and tuple(args.ratio), crop_pct=args.crop_pct)


def run(args) -> int:
    check_statistic(args.statistic)
    if args.plot:
        prepare_output_file(args.plot)
    prep = settings(args)
    args.train_res, args.scale, args.ratio, args.crop_pct = prep.train_res, prep.scale, prep.ratio, prep.crop_pct
    origin = {k: prep.source_of(k) for k in ("train_res", "scale", "ratio", "crop_pct")}
    sizes, source, scan = None, None, None
    if args.sizes:
        sizes = [parse_size(s) for s in args.sizes]
    elif args.data:
        root = split_dir(args.data)
        scan = scan_sizes(root)
        if not scan.sizes:
            raise FixresError(f"no readable image under {root}")
        sizes, source = scan.sizes, f"{len(scan.sizes)} sizes from {root}"
    kw = dict(scale=tuple(args.scale), ratio=tuple(args.ratio), crop_pct=args.crop_pct, sizes=sizes,
              samples=args.samples, seed=args.seed)
    predictions = compare_statistics(args.train_res, source=source, **kw)
    chosen = next(p for p in predictions if p.statistic == args.statistic)
    rows = sensitivity(args.train_res, statistic=args.statistic, **kw)
    if args.plot:
        plot_apparent_size(args.plot, args.train_res, statistic=args.statistic, source=source, **kw)
    scan_info = None if scan is None else {
        "root": str(scan.root), "images": len(scan.sizes), "distinct_sizes": len(set(scan.sizes)),
        "skipped": len(scan.skipped), "seconds": round(scan.seconds, 3), "files_per_s": round(scan.files_per_s)}
    if args.json:
        print_json({"note": GEOMETRIC_NOTE, "prediction": chosen.row(), "statistics": [p.row() for p in predictions],
                    "sensitivity": rows, "scan": scan_info, "plot": args.plot, "settings_from": origin})
        return 0
    print(report(chosen, predictions, rows, scan_info, sizes, args.plot))
    if args.checkpoint or args.model:
        print("  Settings: " + "; ".join(f"{k} from {v}" for k, v in origin.items()))
    return 0


def report(chosen, predictions, rows, scan_info, sizes, plot) -> str:
    p = chosen
    lines = [f"Geometric prediction: train at {p.train_res}px -> test at {p.test_res}px ({p.factor:.3f}x; "
             f"resize the shorter side to {p.test_resize}, centre-crop {p.test_res}), matching {p.statistic}: "
             f"{STATISTICS[p.statistic][1]}.",
             f"  At K_test = K_train the {MEAN_NAME[p.statistic]} of z_test/z_train is {p.ratio_at_train_res:.4f} "
             f"(objects look {1 / p.ratio_at_train_res:.2f}x larger in training); at {p.test_res}px it is "
             f"{p.ratio_at_test_res:.4f}."]
    if p.closed_form:
        lines.append(f"  Closed form: square images, s ~ U[{p.scale[0]:g}, {p.scale[1]:g}], every crop accepted "
                     "(torchvision's rejection is ignored; pass --data or --sizes to simulate it).")
    else:
        shorter = [min(w, h) for w, h in sizes]
        lines.append(f"  Monte-Carlo: {p.samples:,} draws of torchvision's RandomResizedCrop (scale {p.scale[0]:g}-"
                     f"{p.scale[1]:g}, ratio {p.ratio[0]:.4g}-{p.ratio[1]:.4g}, 10 tries then centre crop: "
                     f"fallback in {100 * p.fallback_rate:.3g}% of draws), seed {p.seed}, over {p.source} "
                     f"({len(set(sizes))} distinct, shorter side {min(shorter)}-{max(shorter)}px).")
    if scan_info:
        lines.append(f"  Read {scan_info['images']} image headers in {scan_info['seconds']:.2f}s "
                     f"({scan_info['files_per_s']:,} files/s)"
                     + (f"; skipped {scan_info['skipped']} unreadable files." if scan_info["skipped"] else "."))
    lines += ["", "The three statistics" + (" (closed forms):" if p.closed_form else " (same draws):"),
              table([{**q.row(), "mark": "*" if q.statistic == p.statistic else ""} for q in predictions],
                    [("mark", "used", "s"), ("statistic", "statistic", "s"), ("matches", "matches", "s"),
                     ("ratio_at_train_res", f"at {p.train_res}px", ".4f"), ("test_res", "K_test", "d"),
                     ("factor", "x K_train", ".3f")]),
              "", f"Sensitivity ({p.statistic}): predicted K_test for RandomResizedCrop scale lower bound (rows) "
                  f"and test crop_pct (columns); change the training crops instead of the test resolution:"]
    pcts = sorted({r["crop_pct"] for r in rows})
    grid = {}
    for r in rows:
        grid.setdefault(r["scale_min"], {})[r["crop_pct"]] = r["test_res"]
    cells = [{"scale": f"{a:g}-{p.scale[1]:g}", **{str(c): ("-" if grid[a][c] is None else str(grid[a][c]))
                                                   for c in pcts}} for a in grid]
    lines.append(table(cells, [("scale", "scale", "s")] + [(str(c), f"crop {c:g}", "s") for c in pcts]))
    if plot:
        lines += ["", f"Histogram of apparent-size ratios written to {plot}"]
    lines += ["", GEOMETRIC_NOTE]
    return "\n".join(lines)
