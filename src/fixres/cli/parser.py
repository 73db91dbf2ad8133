"""The parser: one sub-parser per command module, in the order of the data flow."""
from __future__ import annotations

import argparse

from ..version import __version__
from . import (
    adapt_cmd,
    analyze_cmd,
    data_cmd,
    demo_cmd,
    eval_cmd,
    export_cmd,
    grid_cmd,
    predict_cmd,
    stats_cmd,
    sweep_cmd,
    train_cmd,
    transfer_cmd,
    tune_cmd,
)

# In the order of the data flow: data -> train -> evaluate/sweep -> adapt -> export/predict.
COMMANDS = (demo_cmd, data_cmd, analyze_cmd, train_cmd, eval_cmd, sweep_cmd, adapt_cmd, tune_cmd, export_cmd, predict_cmd,
            stats_cmd, grid_cmd, transfer_cmd)


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage dump is long; keep the error one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fixres", description="Fix the train-test resolution discrepancy (FixRes).")
    parser.add_argument("--version", action="version", version=f"fixres {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for module in COMMANDS:
        module.register(sub)
    return parser


__all__ = ["COMMANDS", "Parser", "build_parser"]
