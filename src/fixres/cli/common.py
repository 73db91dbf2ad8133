"""Flag helpers shared by several commands."""
from __future__ import annotations

import json
import sys

from ..core.options import add_arguments, build, from_namespace
from ..core.tables import table  # noqa: F401  (re-exported for command modules)
from ..models.sources import ModelSource


def add_model_source(p, exclude: tuple[str, ...] = ()) -> None:
    """The model flags every command that takes a model shares (see :class:`~fixres.models.sources.ModelSource`)."""
    add_arguments(p, ModelSource, exclude=exclude)


def model_source(args) -> ModelSource:
    """The validated :class:`ModelSource` of the command line (one clear line when it is not)."""
    return build(ModelSource, from_namespace(args, ModelSource))


def report(args, result, *, as_json, as_table, write) -> int:
    """The end of a measuring command: write its files when ``--out`` is given, then print the
    JSON record (``--json``) or the table and the files written."""
    written = write(result, args.out, overwrite=args.overwrite) if args.out else []
    if args.json:
        print_json(as_json(result))
    else:
        print(as_table(result))
        if written:
            print("wrote " + ", ".join(str(p) for p in written))
    return 0


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
