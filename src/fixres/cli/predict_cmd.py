"""``fixres predict``: top-k classes of image files with the recorded test preprocessing."""
from __future__ import annotations

from ..core.errors import FixresError
from ..deploy.predict import classify, load_classifier, predictions_text
from .common import add_model_source, add_output_flags, command, finish, model_source


def register(sub) -> None:
    p = command(sub, "predict", "classify image files with a checkpoint or an exported folder", """
        Print the top-k classes and probabilities of each image, preprocessed as the checkpoint records
        (resize floor(test_res / crop_pct), centre crop test_res, its interpolation and mean/std). An
        unreadable image is reported on its line; the exit code is 2 only if no image could be read.
    """)
    p.add_argument("images", nargs="+", metavar="IMG", help="image files")
    add_model_source(p, exclude=("restrict_labels", "train_res", "scale", "ratio"))
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image (default: 5)")
    p.add_argument("--test-res", type=int, default=None, help="a ladder: its rung at this resolution; another "
                                                              "model: predict at this resolution (default: recorded)")
    p.add_argument("--budget-ms", type=float, default=None,
                   help="a ladder: the most accurate rung whose measured latency is at most X ms", metavar="X")
    p.add_argument("--budget-gflops", type=float, default=None,
                   help="a ladder: the most accurate rung that costs at most Y GFLOPs per image", metavar="Y")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    add_output_flags(p, quiet=None, json="print the predictions as JSON")
    p.set_defaults(handler=run)


def run(args) -> int:
    if args.top_k < 1:   # before loading the model
        raise FixresError(f"--top-k must be at least 1, got {args.top_k}")
    clf = load_classifier(model_source(args), test_res=args.test_res, budget_ms=args.budget_ms,
                          budget_gflops=args.budget_gflops)
    rows = classify(clf, args.images, top_k=args.top_k, device=args.device, batch_size=args.batch_size)
    finish(args, rows, as_json=lambda rows: {**clf.describe(), "predictions": [r.row() for r in rows]},
           as_text=lambda rows: predictions_text(clf, rows))
    if all(r.error for r in rows):
        raise FixresError(f"none of the {len(rows)} image(s) could be read")
    return 0
