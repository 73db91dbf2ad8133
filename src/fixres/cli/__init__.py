"""The command line: ``fixres <command> ...``. The only code that reads argv.

Each command module registers a sub-parser and a handler ``run(args) -> int`` that turns
flags into a library call. A :class:`~fixres.core.errors.FixresError` becomes one line on
stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..core.errors import FixresError
from ..core.runtime import shutdown_distributed
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


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage dump is long; keep the error one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fixres", description="Fix the train-test resolution discrepancy (FixRes).")
    parser.add_argument("--version", action="version", version=f"fixres {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:   # reported by the top-level parser, which does not know the command: name it
        parser.exit(2, f"{getattr(args, 'prog', 'fixres')}: error: unrecognized arguments: {' '.join(extra)}\n")
    try:
        return int(args.handler(args) or 0)
    except FixresError as e:
        print(f"fixres {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fixres {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second failure at exit
        return 0
    finally:
        shutdown_distributed()
