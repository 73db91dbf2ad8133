"""``fixres demo``: the whole story on the embedded synthetic dataset."""
from __future__ import annotations

from ..experiments.demo import DemoConfig, run_demo
from ..experiments.report import demo_table, story_lines


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the FixRes story on the embedded dataset (minutes on a CPU)",
                       description="Synthesise the embedded dataset, train a small model at a low resolution, "
                                   "predict and measure the best test resolution, adapt the model to it, and "
                                   "write a report (HTML, Markdown, PNGs).")
    p.add_argument("--out", default=DemoConfig.out, help=f"output directory (default: {DemoConfig.out})")
    p.add_argument("--seed", type=int, default=DemoConfig.seed, help="random seed (default: 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run)


def run(args) -> int:
    cfg = DemoConfig(out=args.out, seed=args.seed, device=args.device, workers=args.workers)
    summary = run_demo(cfg, overwrite=args.overwrite, quiet=args.quiet)
    print()
    for line in story_lines(summary):
        print(f"- {line}")
    print("\nval top-1 at each test resolution (held-out: the training images that chose the resolution):\n")
    print(demo_table(summary))
    t = summary["timings"]
    print("\ntimings (s): " + ", ".join(f"{k} {v}" for k, v in t.items()) + f"; total {sum(t.values()):.0f}")
    print(f"report: {summary['report']['html']} (and report.md, PNGs, demo.json)")
    return 0
