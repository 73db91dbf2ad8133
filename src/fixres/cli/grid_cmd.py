"""``fixres grid``: train x test resolution tables (the paper's experiments), resumable."""
from __future__ import annotations

from ..core.options import add_arguments, from_namespace
from ..experiments.grid import GridConfig, load_config, run_grid
from ..experiments.grid.config import SECTIONS, parse_sets
from .common import add_output_flags, command, finish


def add_experiment_flags(p, cls) -> None:
    """--config, one flag per top-level setting of ``cls``, --set, --quiet, --json (grid and transfer)."""
    p.add_argument("--config", metavar="FILE", help="YAML config (flags override its top-level settings); "
                                                    "configs/ holds the paper's runs")
    add_arguments(p, cls, exclude=("command", *SECTIONS))
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="a setting of the train or adapt section, e.g. --set train.epochs=5 --set adapt.method=bn "
                        "(repeatable; merged into the config file's section)")
    add_output_flags(p, quiet="no progress bars and no stage lines", json="print the whole result as JSON")


def experiment_config(args, cls):
    """The validated config of ``--config`` + flags + ``--set`` (``args.command`` is the sub-command)."""
    given = {k: v for k, v in from_namespace(args, cls).items() if k != "command"}
    return load_config(cls, args.config, given, sets=parse_sets(args.set))


def register(sub) -> None:
    p = command(sub, "grid", "train at several resolutions, sweep and adapt each: the paper's tables", """
        Train a model at each training resolution, sweep every run over the test resolutions, adapt it
        at each test resolution, and write top-1 tables (train res x test res, without and with
        adaptation) and a cost table into --out. Run it again to continue an interrupted grid: finished
        cells are never recomputed. Without --data (or data: in the config) it runs on the embedded
        synthetic dataset, CI-sized by default. See docs/grid.md.
    """)
    add_experiment_flags(p, GridConfig)
    p.set_defaults(handler=run)


def run(args) -> int:
    cfg = experiment_config(args, GridConfig)
    report = run_grid(cfg, quiet=args.quiet)
    return finish(args, report, as_json=lambda r: r.to_json(),
                  as_text=lambda r: f"{r.text()}\n\n{len(r.rows)} cells in {cfg.out}/ (grid.md, grid.csv, costs.csv, "
                                    f"grid.json, grid.png); this invocation took {r.seconds:.0f}s")
