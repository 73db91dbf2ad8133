"""fixres: fix the train-test resolution discrepancy of image classifiers.

Train at a low resolution, find the test resolution that matches it, adapt the model to
that resolution cheaply, and export it with its test-time preprocessing recorded.
The CLI (``fixres ...``) wraps the functions re-exported here.
"""
from .adapt import AdaptOptions, adapt_checkpoint  # noqa: E402
from .analyze import predict_test_res  # noqa: E402
from .core.errors import FixresError  # noqa: E402
from .core.runtime import Runtime  # noqa: E402
from .data import EvalTransform, TrainTransform, eval_geometry, scan_dataset, scan_split  # noqa: E402
from .data.preprocessing import Preprocessing  # noqa: E402
from .deploy.export import export_checkpoint  # noqa: E402
from .measure.infer import EvalOptions, EvalResult, evaluate, evaluate_checkpoint  # noqa: E402
from .measure.stats import StatsOptions, feature_stats  # noqa: E402
from .measure.sweep import SweepOptions, sweep_checkpoint  # noqa: E402
from .models import create_model  # noqa: E402
from .models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint  # noqa: E402
from .models.sources import open_checkpoint  # noqa: E402
from .train.config import TrainConfig  # noqa: E402
from .train.loop import TrainResult, fit  # noqa: E402
from .version import __version__  # noqa: F401
