"""What every command shares: its output flags, the model flags, and how a command ends."""
from __future__ import annotations

import json
import sys

from ..core.options import add_arguments, build, from_namespace
from ..core.tables import table  # noqa: F401  (re-exported for command modules)
from ..models.sources import ModelSource


def add_output_flags(p, *, out: str | None = None, out_required: bool = False, overwrite: str | None = None,
                     quiet: str | None = "no progress bars", json: str | None = "print the result as JSON") -> None:
    """``--out``, ``--overwrite``, ``--quiet``, ``--json``: each added when its help is given."""
    if out is not None:
        p.add_argument("--out", required=out_required, default=None, help=out)
    if overwrite is not None:
        p.add_argument("--overwrite", action="store_true", help=overwrite)
    if quiet is not None:
        p.add_argument("--quiet", action="store_true", help=quiet)
    if json is not None:
        p.add_argument("--json", action="store_true", help=json)


def add_model_source(p, exclude: tuple[str, ...] = ()) -> None:
    """The model flags every command that takes a model shares (see :class:`~fixres.models.sources.ModelSource`)."""
    add_arguments(p, ModelSource, exclude=exclude)


def model_source(args) -> ModelSource:
    """The validated :class:`ModelSource` of the command line (one clear line when it is not)."""
    return build(ModelSource, from_namespace(args, ModelSource))


def finish(args, result, *, as_json, as_text, write=None) -> int:
    """The end of a command: write its files when ``--out`` is given (``write``), then print the
    JSON record (``--json``) or the text and the files written."""
    written = write(result, args.out, overwrite=args.overwrite) if write is not None and args.out else []
    if getattr(args, "json", False):
        print_json(as_json(result))
    else:
        print(as_text(result))
        if written:
            print("wrote " + ", ".join(str(p) for p in written))
    return 0


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def command(sub, name: str, help: str, description: str):
    """A sub-command's parser; ``description``: its paragraph, as written in the command module."""
    p = sub.add_parser(name, help=help, description=" ".join(description.split()))
    p.set_defaults(prog=p.prog)      # errors that the top-level parser reports still name the command
    return p
