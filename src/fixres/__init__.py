"""fixres: fix the train-test resolution discrepancy of image classifiers.

Train at a low resolution, find the test resolution that matches it, adapt the model to
that resolution cheaply, and export it with its test-time preprocessing recorded.
The CLI (``fixres ...``) wraps the functions re-exported here.

The names are imported on first use (PEP 562), so that ``import fixres`` and the command line
start without loading torch (and an interrupt while it loads is one line, not a traceback).
"""
from .version import __version__

_WHERE = {
    "AdaptOptions": ".adapt", "adapt_checkpoint": ".adapt",
    "predict_test_res": ".analyze",
    "FixresError": ".core.errors",
    "Runtime": ".core.runtime",
    "EvalTransform": ".data", "TrainTransform": ".data", "eval_geometry": ".data", "scan_dataset": ".data",
    "scan_split": ".data",
    "Preprocessing": ".data.preprocessing",
    "export_checkpoint": ".deploy.export",
    "EvalOptions": ".measure.infer", "EvalResult": ".measure.infer", "evaluate": ".measure.infer",
    "evaluate_checkpoint": ".measure.infer",
    "StatsOptions": ".measure.stats", "feature_stats": ".measure.stats",
    "SweepOptions": ".measure.sweep", "sweep_checkpoint": ".measure.sweep",
    "create_model": ".models",
    "CheckpointMeta": ".models.checkpoint", "load_checkpoint": ".models.checkpoint",
    "save_checkpoint": ".models.checkpoint",
    "open_checkpoint": ".models.sources",
    "TrainConfig": ".train.config",
    "TrainResult": ".train.loop", "fit": ".train.loop",
}
__all__ = ["__version__", *_WHERE]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value   # imported once
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
