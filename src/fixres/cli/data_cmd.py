"""``fixres data ...``: dataset utilities (the embedded synthetic dataset, packed stores)."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import FixresError
from ..core.rundir import ensure_writable_dir
from .common import add_output_flags, command


def register(sub) -> None:
    p = command(sub, "data", "dataset utilities", """
        Dataset utilities.
    """)
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND", parser_class=type(p))

    s = command(data_sub, "synth", "write the embedded synthetic dataset (ImageFolder of JPEGs)", """
        Write OUT/train/<class>/*.jpg and OUT/val/<class>/*.jpg: badges whose class is a fine texture,
        at varied sizes and positions on cluttered backgrounds. Deterministic for a seed. --shift NAME
        also writes OUT/shifted and OUT/shifted-holdout: the same classes rendered under a distribution
        shift (sketch, neon, cartoon), --val-per-class images per class each; on an OUT that already
        holds a dataset it writes only those two, with that dataset's classes and seed.
    """)
    s.add_argument("out", help="output directory (must not hold a dataset already)")
    s.add_argument("--classes", type=int, default=None, help="number of classes (default: 10)")
    s.add_argument("--train-per-class", type=int, default=400, help="training images per class (default: 400)")
    s.add_argument("--val-per-class", type=int, default=None,
                   help="validation (and shifted) images per class (default: 100, or the dataset's with --shift)")
    s.add_argument("--seed", type=int, default=None, help="random seed (default: 0)")
    s.add_argument("--shift", default=None, metavar="NAME",
                   help="also write shifted/ and shifted-holdout/ under this shift: sketch, neon or cartoon")
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    add_output_flags(s, quiet="no progress bar", json=None)
    s.set_defaults(handler=run_synth)

    k = command(data_sub, "pack", "convert an ImageFolder into a packed store for fast reading", """
        Write SRC (a dataset with train/ and val/, or one split of class directories) into OUT as packed
        stores: a few large shard files plus an index, memory-mapped when read. Every command that takes
        a dataset directory takes OUT. Resumable: run it again to continue an interrupted pack. Verified
        on completion. With --verify and one path, check a store.
    """)
    k.add_argument("src", help="ImageFolder dataset or split to pack (with --verify alone: the store to check)")
    k.add_argument("out", nargs="?", help="output directory (new, or an interrupted pack of the same SRC)")
    k.add_argument("--max-size", type=int, default=None,
                   help="bring the shorter side of larger images down to this many pixels (changes pixels; "
                        "default: keep every image as it is)")
    k.add_argument("--format", choices=("jpeg", "raw"), default="jpeg",
                   help="jpeg: original file bytes, re-encoded JPEG only for resized images (default); "
                        "raw: decoded RGB pixels (larger, nothing to decode)")
    k.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded images (default: 90)")
    k.add_argument("--shard-size", type=float, default=1024, metavar="MB", help="shard size in MB (default: 1024)")
    k.add_argument("--workers", type=int, default=None, help="encoding processes (default: all cores)")
    k.add_argument("--verify", action="store_true", help="with one path: verify that store instead of packing")
    add_output_flags(k, quiet="no progress bar", json=None)
    k.set_defaults(handler=run_pack)

    v = command(data_sub, "verify", "check every byte of a packed store", """
        Check a packed store (or every split store of a packed dataset): format version, counts, shard
        sizes and SHA-256, every image's CRC32.
    """)
    v.add_argument("store", help="packed store, or packed dataset directory")
    v.set_defaults(handler=run_verify)


def run_synth(args) -> int:
    from ..data.synth import synthesize
    ensure_writable_dir(Path(args.out), keep=False)     # before minutes of rendering
    try:
        summary = synthesize(Path(args.out), classes=args.classes, train_per_class=args.train_per_class,
                             val_per_class=args.val_per_class, seed=args.seed, workers=args.workers,
                             progress=not args.quiet, shift=args.shift)
    except (ValueError, FileExistsError) as e:
        raise FixresError(str(e)) from None
    except OSError as e:
        raise FixresError(f"cannot write {args.out}: {e.strerror or e}") from None
    parts = [f"{summary.n_train} train + {summary.n_val} val"] if summary.n_train else []
    if summary.shift:
        parts.append(f"{summary.n_shifted} shifted + {summary.n_shifted} shifted-holdout ({summary.shift})")
    print(f"wrote {' + '.join(parts)} images of {len(summary.classes)} classes to {summary.root} "
          f"in {summary.seconds:.1f}s")
    return 0


def run_pack(args) -> int:
    from ..data.packer import PackOptions, pack
    if args.out is None:
        if not args.verify:
            raise FixresError("give SRC and OUT to pack, or --verify STORE to check a store")
        return _verify(args.src)
    options = PackOptions(max_size=args.max_size, format=args.format, quality=args.quality,
                          shard_mb=args.shard_size, workers=args.workers)
    ensure_writable_dir(Path(args.out), keep=False)     # before reading a single image
    for s in pack(args.src, args.out, options, progress=not args.quiet):
        resumed = ("; already complete, nothing written" if s.already_complete else
                   f"; continued after {s.resumed_at} images packed earlier" if s.resumed_at else "")
        codecs = ", ".join(f"{n} {name}" for name, n in sorted(s.codecs.items()))
        print(f"{s.root}: {s.samples} images ({codecs}), {s.resized} resized, {s.skipped} refused by the scan; "
              f"{s.shards} shard{'s' if s.shards != 1 else ''}, {s.stored_bytes / 2**20:.1f} MB from "
              f"{s.source_bytes / 2**20:.1f} MB; {'' if s.already_complete else 'verified; '}{s.seconds:.1f}s{resumed}")
    return 0


def run_verify(args) -> int:
    return _verify(args.store)


def _verify(path) -> int:
    from ..data.pack import verify_store
    from ..data.packer import stores_under
    bad = 0
    for root in stores_under(path):
        report = verify_store(root)
        status = "OK" if report.ok else f"{len(report.problems)} problem(s)"
        print(f"{root}: {status}: {report.samples} images, {report.shards} shard(s), {report.bytes / 2**20:.1f} MB")
        for problem in report.problems:
            print(f"  {problem}")
        bad += not report.ok
    if bad:
        raise FixresError(f"{bad} packed store(s) failed verification")
    return 0
