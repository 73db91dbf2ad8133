"""Measuring a model (``fixres eval``, ``sweep``, ``stats``): ``infer``/``evaluate`` at one geometry, the sweep over test resolutions with
each one's cost (FLOPs, timing) and the deployment choices, and the pooled-feature statistics."""
from .infer import EvalOptions, EvalResult, evaluate, evaluate_checkpoint
from .stats import StatsOptions, feature_stats
from .sweep import SweepOptions, SweepResult, sweep_checkpoint, sweep_checkpoints

__all__ = ["EvalOptions", "EvalResult", "StatsOptions", "SweepOptions", "SweepResult", "evaluate",
           "evaluate_checkpoint", "feature_stats", "sweep_checkpoint", "sweep_checkpoints"]
