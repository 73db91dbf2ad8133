"""``fixres sweep``: accuracy against test resolution, in one pass over the data."""
from __future__ import annotations

from ..core.errors import FixresError
from ..core.options import add_arguments, build, from_namespace
from ..core.rundir import prepare_output_files
from ..core.runtime import init_distributed
from ..measure.sweep import SweepOptions, sweep_checkpoint, sweep_checkpoints, sweep_ladder
from ..models.ladder import Ladder, is_ladder
from ..measure.sweep_report import (
    SWEEP_FILES,
    comparison_json,
    comparison_table,
    sweep_json,
    sweep_table,
    write_comparison,
    write_sweep,
)
from ..models.sources import ModelSource
from .common import add_model_source, add_output_flags, command, finish


def register(sub) -> None:
    p = command(sub, "sweep", "accuracy against test resolution (one pass over the data)", """
        Evaluate a checkpoint at several test resolutions (and crop_pcts) in one pass: each image is
        decoded once and resized to every geometry exactly as `fixres eval` does. The best resolution is
        chosen on held-out training images (or a training sample), then reported on --split. Every row
        also gives the resolution's cost (GFLOPs, parameters, measured img/s and latency); --within and
        --budget-* choose a resolution to deploy, on the same images as the best. Several models (a run
        and its `fixres adapt` outputs) share the table and the plots. Under torchrun every process
        takes a shard; rank 0 prints and writes.
    """)
    add_model_source(p, exclude=("checkpoint",))
    p.add_argument("--checkpoint", nargs="+", metavar="CKPT",
                   help="fixres checkpoint(s): run directory (its best checkpoint), checkpoint directory or "
                        "model.safetensors; several (and/or --model): compared side by side (same classes)")
    p.add_argument("--data", required=True, help="dataset directory holding train/ and the reported split")
    add_arguments(p, SweepOptions)
    add_output_flags(p, out="folder to write sweep.csv, sweep.json, sweep.png and sweep-cost.png into, as one unit",
                     overwrite="replace the sweep already in --out")
    p.set_defaults(handler=run)


def sweep_sources(args) -> list[ModelSource]:
    """--model (if given) then each --checkpoint, with the same preprocessing and label flags
    (--ema: the checkpoints' EMA weights)."""
    flags = {k: v for k, v in from_namespace(args, ModelSource).items() if k != "checkpoint"}
    shared = {k: v for k, v in flags.items() if k not in ("model", "pretrained", "weights", "class_map")}
    sources = [build(ModelSource, {k: v for k, v in flags.items() if k != "ema"})] if args.model else []
    sources += [build(ModelSource, {**shared, "checkpoint": c}) for c in args.checkpoint or ()]
    if not sources:
        raise FixresError("give the model: --checkpoint PATH [PATH ...] and/or --model NAME")
    return sources


def run(args) -> int:
    sources = sweep_sources(args)
    ladders = [s.checkpoint for s in sources if s.checkpoint and is_ladder(s.checkpoint)]
    given = from_namespace(args, SweepOptions)
    if ladders and len(sources) > 1:
        raise FixresError(f"{ladders[0]} is a ladder: sweep it alone (its curve is drawn beside its base's)")
    if ladders and "test_res" not in given:     # by default, the ladder's own rungs
        given["test_res"] = Ladder.open(ladders[0]).resolutions
    opts = build(SweepOptions, given)   # validated before loading anything
    dist_env = init_distributed(opts.device)
    if args.out and dist_env.is_main:
        prepare_output_files(args.out, SWEEP_FILES, overwrite=args.overwrite, keep=False)
    if ladders:
        result = sweep_ladder(ladders[0], args.data, opts, quiet=args.quiet, dist_env=dist_env)
        write, as_json, as_table = write_comparison, comparison_json, comparison_table
    elif len(sources) == 1:
        result = sweep_checkpoint(sources[0], args.data, opts, quiet=args.quiet, dist_env=dist_env)
        write, as_json, as_table = write_sweep, sweep_json, sweep_table
    else:
        result = sweep_checkpoints(sources, args.data, opts, quiet=args.quiet, dist_env=dist_env)
        write, as_json, as_table = write_comparison, comparison_json, comparison_table
    if not dist_env.is_main:
        return 0
    return finish(args, result, as_json=as_json, as_text=as_table, write=write)
