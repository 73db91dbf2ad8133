"""``fixres eval``: top-1/top-5/loss of a checkpoint at one test resolution."""
from __future__ import annotations

from ..adapt.test_time import TestTimeOptions, evaluate_with_tent
from ..core.options import add_arguments, build, from_namespace
from ..core.runtime import init_distributed
from ..measure.infer import EvalOptions, Evaluation, evaluate_checkpoint
from .common import add_model_source, add_output_flags, command, finish, model_source


def register(sub) -> None:
    p = command(sub, "eval", "evaluate a checkpoint at a test resolution", """
        Evaluate a checkpoint on DIR/<split>: resize the shorter side to floor(test_res / crop_pct),
        centre-crop test_res. Defaults are what the checkpoint records (an adapted checkpoint records
        its adapted resolution).
    """)
    add_model_source(p)
    p.add_argument("--data", required=True, help="dataset directory holding the split")
    add_arguments(p, EvalOptions)
    add_arguments(p, TestTimeOptions)
    add_output_flags(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    source = model_source(args)
    opts = build(EvalOptions, from_namespace(args, EvalOptions))    # validated before loading anything
    tta = build(TestTimeOptions, from_namespace(args, TestTimeOptions))
    dist_env = init_distributed(opts.device)  # under torchrun: every rank evaluates a shard
    test_time = None
    if tta.tent is None:
        result, meta, skipped = evaluate_checkpoint(source, args.data, opts, quiet=args.quiet, dist_env=dist_env)
    else:
        result, meta, skipped, test_time = evaluate_with_tent(source, args.data, opts, tta, quiet=args.quiet,
                                                              dist_env=dist_env)
    if not dist_env.is_main:
        return 0
    evaluation = Evaluation(result, meta, str(source.checkpoint or source.model), args.data, opts.split, tuple(skipped),
                            test_time)
    return finish(args, evaluation, as_json=Evaluation.record, as_text=Evaluation.text)
