"""``fixres adapt``: adapt a trained model to a higher test resolution, cheaply.

Methods (docs/adapt.md): ``fixres`` (the paper's: classifier + statistics of the last
batch-norm, trained on training images with the test preprocessing at K_test), ``bn``
(statistics only, label-free), ``parametric`` (Frechet equalisation of the pooled
features, label-free), ``head`` (classifier only) and ``full`` (every layer).

Training runs on cached features of the frozen layers when the model can be split
(torch.fx), which is the same computation as the full-network loop, at a fraction of
the cost.
"""
from ..models.equaliser import Equaliser, reapply_adaptation
from ..models.pooled import pooled_features
from .options import AdaptOptions
from .pipeline import AdaptResult, adapt_checkpoint
from .surgery import METHODS, Plan, find_adaptable_layers, find_classifier, make_plan

__all__ = ["AdaptOptions", "AdaptResult", "Equaliser", "METHODS", "Plan", "adapt_checkpoint",
           "find_adaptable_layers", "find_classifier", "make_plan", "pooled_features", "reapply_adaptation"]
