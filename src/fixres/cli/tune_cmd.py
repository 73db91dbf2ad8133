"""``fixres tune``: a model on the user's data -- predict, sweep, ladder, export, report."""
from __future__ import annotations

from ..core.options import add_arguments, build, from_namespace
from ..core.runtime import init_distributed
from ..experiments.tune import TuneOptions, TuneResult, run_tune
from .common import add_model_source, add_output_flags, command, finish, model_source


def register(sub) -> None:
    p = command(sub, "tune", "one model for every budget: sweep, a ladder of adapted resolutions, export, report", """
        Predict the test resolution from the crop geometry, sweep test resolutions (the best chosen on
        held-out training images or a training sample, never on val), pick the rungs (the Pareto front
        of accuracy against measured cost, a handful), adapt the model to every rung (a ladder: the base
        once and per rung only what its adaptation changed), sweep the ladder beside the unadapted
        model, export it (one timm folder per rung), and write OUT/report.html with the rung to deploy
        for each budget. See docs/tune.md.
    """)
    add_model_source(p)
    p.add_argument("--data", required=True, help="dataset directory with train/ and val/")
    add_arguments(p, TuneOptions)
    add_output_flags(p, out="folder to write (must not exist or be empty; written as one unit)", out_required=True,
                     overwrite="replace a tune folder already in --out", json="print tune.json")
    p.set_defaults(handler=run)


def run(args) -> int:
    source = model_source(args)
    opts = build(TuneOptions, from_namespace(args, TuneOptions))
    dist_env = init_distributed(opts.device)
    result = run_tune(source, args.data, opts, args.out, overwrite=args.overwrite, quiet=args.quiet, dist_env=dist_env)
    if not dist_env.is_main:
        return 0
    return finish(args, result, as_json=lambda r: r.summary, as_text=TuneResult.text)
