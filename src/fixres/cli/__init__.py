"""The command line: ``fixres <command> ...``. The only code that reads argv.

Each command module registers a sub-parser and a handler ``run(args) -> int`` that turns
flags into a library call. A :class:`~fixres.core.errors.FixresError` becomes one line on
stderr and exit code 2.

The command modules (and torch with them) are imported inside :func:`main`, so that an interrupt
during those first seconds of imports is one line too.
"""
from __future__ import annotations

import os
import stat
import sys


def build_parser():
    from .parser import build_parser as build
    return build()


def _stdout_is_a_pipe() -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode) or stat.S_ISSOCK(os.fstat(sys.stdout.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):   # no file descriptor (captured): cannot be the pipe
        return False


def main(argv: list[str] | None = None) -> int:
    command = "fixres"
    try:
        from ..core.errors import FixresError, out_of_memory
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        command = f"fixres {args.command}"
        if extra:   # reported by the top-level parser, which does not know the command: name it
            parser.exit(2, f"{getattr(args, 'prog', command)}: error: unrecognized arguments: {' '.join(extra)}\n")
        try:
            return int(args.handler(args) or 0)
        except FixresError as e:
            print(f"{command}: error: {e}", file=sys.stderr)
            return 2
        except (MemoryError, RuntimeError) as e:
            if out_of_memory(e) is None:
                raise
            print(f"{command}: error: {out_of_memory(e)}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_is_a_pipe():      # a broken pipe elsewhere (a data-loading worker's): a real failure
            raise
        # output piped into e.g. `head`, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second failure at exit
        return 0
    finally:
        if "fixres.core.runtime" in sys.modules:
            sys.modules["fixres.core.runtime"].shutdown_distributed()
