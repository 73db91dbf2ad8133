"""``fixres transfer``: fine-tune pretrained weights on a target dataset, then adapt to the test resolution."""
from __future__ import annotations

from ..experiments.transfer import TransferConfig, run_transfer
from .common import command, finish
from .grid_cmd import add_experiment_flags, experiment_config


def register(sub) -> None:
    p = command(sub, "transfer", "the paper's transfer protocol: fine-tune at K_train, adapt at K_test", """
        Start from pretrained weights (a local file or fixres checkpoint with --weights; timm's with
        --pretrained, online), train the whole network on --data at --train-res with a new classifier,
        sweep --test-res, adapt at --adapt-res (default: the resolution the sweep chose without val) and
        report val before and after. --no-finetune adapts the weights as they are. Resumable. See
        docs/transfer.md.
    """)
    add_experiment_flags(p, TransferConfig)
    p.set_defaults(handler=run)


def run(args) -> int:
    cfg = experiment_config(args, TransferConfig)
    result = run_transfer(cfg, quiet=args.quiet)
    return finish(args, result, as_json=lambda r: {"summary": r.summary(), "source": r.source, "cells": r.cells},
                  as_text=lambda r: f"{r.markdown()}\nwritten: {cfg.out}/transfer.md, transfer.json; this invocation "
                                    f"took {r.seconds:.0f}s")
