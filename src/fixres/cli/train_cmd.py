"""``fixres train``: train a timm model at a chosen resolution."""
from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import FixresError
from ..core.options import add_arguments, build, check_keys, from_namespace, read_yaml
from ..train.config import TrainConfig
from ..train.loop import fit
from ..train.run import stored_config, summary_text
from .common import add_output_flags, command, finish


def register(sub) -> None:
    p = command(sub, "train", "train a model at a chosen (low) resolution", """
        Train a timm model on an ImageFolder dataset (DIR/train, DIR/val) at --train-res, evaluating
        every epoch at --test-res, into a run directory. Under torchrun it trains on all processes
        (DistributedDataParallel).
    """)
    p.add_argument("--config", metavar="FILE", help="YAML file of settings (command-line flags override it)")
    add_arguments(p, TrainConfig)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_output_flags(p, overwrite="replace an existing run directory in --out", quiet="no progress bar: one line per epoch",
                     json="print the run summary as JSON")
    p.set_defaults(handler=run)


def restarted_by_torchrun() -> bool:
    """True in a worker that torchrun's elastic agent restarted (TORCHELASTIC_RESTART_COUNT > 0)."""
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") not in ("", "0")


def run(args) -> int:
    given = from_namespace(args, TrainConfig)
    from_file = read_yaml(args.config) if args.config else {}
    if args.config:
        check_keys(TrainConfig, from_file, args.config)
    sources = [from_file, given]
    out = given.get("out") or from_file.get("out")
    if not args.resume and restarted_by_torchrun() and out and (Path(out) / "config.yaml").is_file():
        args.resume = True  # torchrun --max-restarts relaunched us after a failure: continue, never restart from 0
    if args.resume:
        if not out:
            raise FixresError("--resume needs --out RUN_DIR")
        sources.insert(0, stored_config({**from_file, **given}, Path(out)))
    cfg = build(TrainConfig, *sources)
    result = fit(cfg, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    if not result.is_main:  # under torchrun only rank 0 reports
        return 0
    return finish(args, result.summary, as_json=lambda s: s, as_text=summary_text)
