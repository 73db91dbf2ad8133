"""``fixres data ...``: dataset utilities (the embedded synthetic dataset)."""
from __future__ import annotations

from pathlib import Path

from ..errors import FixresError


def register(sub) -> None:
    p = sub.add_parser("data", help="dataset utilities", description="Dataset utilities.")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND", parser_class=type(p))

    s = data_sub.add_parser("synth", help="write the embedded synthetic dataset (ImageFolder of JPEGs)",
                            description="Write OUT/train/<class>/*.jpg and OUT/val/<class>/*.jpg: badges whose class "
                                        "is a fine texture, at varied sizes and positions on cluttered backgrounds. "
                                        "Deterministic for a seed.")
    s.add_argument("out", help="output directory (must not hold a dataset already)")
    s.add_argument("--classes", type=int, default=10, help="number of classes (default: 10)")
    s.add_argument("--train-per-class", type=int, default=400, help="training images per class (default: 400)")
    s.add_argument("--val-per-class", type=int, default=100, help="validation images per class (default: 100)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(handler=run_synth)


def run_synth(args) -> int:
    from ..data.synth import synthesize
    try:
        summary = synthesize(Path(args.out), classes=args.classes, train_per_class=args.train_per_class,
                             val_per_class=args.val_per_class, seed=args.seed, workers=args.workers,
                             progress=not args.quiet)
    except (ValueError, FileExistsError) as e:
        raise FixresError(str(e)) from None
    except OSError as e:
        raise FixresError(f"cannot write {args.out}: {e.strerror or e}") from None
    print(f"wrote {summary.n_train} train + {summary.n_val} val images of {len(summary.classes)} classes "
          f"to {summary.root} in {summary.seconds:.1f}s")
    return 0
