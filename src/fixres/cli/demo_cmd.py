"""``fixres demo``: the whole story on the embedded synthetic dataset."""
from __future__ import annotations

from ..experiments.demo import DemoConfig, run_demo
from ..experiments.tune_report import tune_text
from .common import add_output_flags, command


def register(sub) -> None:
    p = command(sub, "demo", "run the FixRes story on the embedded dataset (minutes on a CPU)", """
        Synthesise the embedded dataset, train a small model at a low resolution, predict and measure
        the best test resolution, adapt the model to it, and write a report (HTML, Markdown, PNGs).
    """)
    p.add_argument("--out", default=DemoConfig.out, help=f"output directory (default: {DemoConfig.out})")
    p.add_argument("--seed", type=int, default=DemoConfig.seed, help="random seed (default: 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes")
    add_output_flags(p, overwrite="replace an existing demo directory", json=None)
    p.set_defaults(handler=run)


def run(args) -> int:
    cfg = DemoConfig(out=args.out, seed=args.seed, device=args.device, workers=args.workers)
    summary = run_demo(cfg, overwrite=args.overwrite, quiet=args.quiet)
    print(tune_text(summary))
    return 0
