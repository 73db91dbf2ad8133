"""``fixres adapt``: adapt a checkpoint to a test resolution (FixRes fine-tuning and cheaper
variants), or to several at once: a ladder."""
from __future__ import annotations

from ..adapt import AdaptOptions, AdaptResult
from ..adapt.ladder import LadderResult, adapt_ladder
from ..core.options import add_arguments, build, from_namespace
from ..core.runtime import init_distributed
from ..data.transforms import resolutions
from ..measure.timing import ENGINES
from .common import add_model_source, add_output_flags, command, finish, model_source


def register(sub) -> None:
    p = command(sub, "adapt", "adapt a checkpoint to a higher test resolution, or to several (a ladder)", """
        Adapt a checkpoint to --test-res on the TRAINING images of --data with the test preprocessing
        (never its held-out or val images), measure val accuracy at --test-res before and after, and
        write a checkpoint directory whose default test resolution is --test-res. Several --test-res
        (values or START:END:STEP ranges) write a ladder: the base weights once and per resolution only
        what its adaptation changed, every image decoded once for all of them. See docs/adapt.md and
        docs/ladder.md.
    """)
    add_model_source(p)
    p.add_argument("--data", required=True, help="dataset directory with train/ and val/")
    p.add_argument("--test-res", required=True, nargs="+", type=str, metavar="RES",
                   help="test resolution K_test to adapt to (pixels); several, or ranges: a ladder of rungs")
    add_arguments(p, AdaptOptions, exclude=("test_res",))
    p.add_argument("--no-timing", dest="timing", action="store_false",
                   help="a ladder: do not measure each rung's speed (GFLOPs are still counted)")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="a ladder: what times each rung (torch, or onnxruntime on its ONNX export; auto: onnxruntime "
                        "on the CPU where installed)")
    add_output_flags(p, out="checkpoint directory (or ladder folder) to write (must not exist or be empty)",
                     out_required=True, overwrite="replace the fixres checkpoint or ladder already in --out",
                     quiet="no progress bars and no per-epoch lines", json="print the adaptation report as JSON")
    p.set_defaults(handler=run)


def run(args) -> int:
    source = model_source(args)
    rungs = _rungs(args.test_res)
    opts = build(AdaptOptions, {**from_namespace(args, AdaptOptions), "test_res": rungs[0]})
    dist_env = init_distributed(opts.device)  # under torchrun: the passes over the images are shared
    result = adapt_ladder(source, args.data, opts, rungs, out=args.out, overwrite=args.overwrite, quiet=args.quiet,
                          timing=args.timing, engine=args.engine, dist_env=dist_env)
    if not dist_env.is_main:
        return 0
    if isinstance(result, LadderResult):
        return finish(args, result, as_json=lambda r: r.record, as_text=LadderResult.text)
    return finish(args, result, as_json=AdaptResult.record, as_text=AdaptResult.text)


def _rungs(values) -> tuple[int, ...]:
    """Each value once, in the order given; a value given twice is refused by the ladder."""
    out = []
    for value in values:
        out.extend(resolutions(value))
    return tuple(out)
