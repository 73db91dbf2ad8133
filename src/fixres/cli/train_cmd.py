"""``fixres train``: train a timm model at a chosen resolution."""
from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import FixresError
from ..core.options import add_arguments, build, check_keys, from_namespace, read_yaml
from ..train.config import TrainConfig
from ..train.loop import fit
from ..train.run import stored_config
from .common import print_json


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model at a chosen (low) resolution",
                       description="Train a timm model on an ImageFolder dataset (DIR/train, DIR/val) at --train-res, "
                                   "evaluating every epoch at --test-res, into a run directory. "
                                   "Under torchrun it trains on all processes (DistributedDataParallel).")
    p.add_argument("--config", metavar="FILE", help="YAML file of settings (command-line flags override it)")
    add_arguments(p, TrainConfig)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar: one line per epoch")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
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
    s = result.summary
    if args.json:
        print_json(s)
    else:
        best = f"{s['best_val_top1']:.2f}" if s.get("best_val_top1") is not None else "-"
        ramp = (s.get("recipe") or {}).get("train_res_schedule")
        res = f"{ramp['start']}->{ramp['end']}px (progressive)" if ramp else f"{s['train_res']}px"
        print(f"{s['model']} trained at {res} for {s['epochs']} epochs in {s['train_seconds']:.0f}s "
              f"({s['train_images_per_s']:.0f} img/s); best val top-1 at {s['test_res']}px: {best} "
              f"(epoch {s['best_epoch']}); run: {result.run_dir}")
    return 0
