"""fixres: fix the train-test resolution discrepancy of image classifiers.

Train at a low resolution, find the test resolution that matches it, adapt the model to
that resolution cheaply, and export it with its test-time preprocessing recorded.
The CLI (``fixres ...``) wraps the functions re-exported here.
"""
__version__ = "0.1.0"

from .checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint  # noqa: E402
from .data import scan_dataset, scan_split, EvalTransform, TrainTransform, eval_geometry  # noqa: E402
from .data.preprocessing import Preprocessing  # noqa: E402
from .errors import FixresError  # noqa: E402
from .evaluate import EvalOptions, EvalResult, evaluate, evaluate_checkpoint  # noqa: E402
from .models import create_model  # noqa: E402
from .runtime import Runtime  # noqa: E402
from .sources import open_checkpoint  # noqa: E402
from .train import TrainResult, fit  # noqa: E402
from .train_config import TrainConfig  # noqa: E402
from .analyze import predict_test_res  # noqa: E402
from .sweep import SweepOptions, sweep_checkpoint  # noqa: E402
from .adapt import AdaptOptions, adapt_checkpoint  # noqa: E402
from .export import export_checkpoint  # noqa: E402
from .stats import StatsOptions, feature_stats  # noqa: E402
