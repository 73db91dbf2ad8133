"""Data: reading image folders, the synthetic dataset, transforms and loaders."""
from .decode import IMAGE_EXTENSIONS, UnreadableImage, load_rgb, read_header
from .folder import DatasetIndex, scan_dataset, scan_split
from .index import Sample, SplitIndex
from .loader import Batch, EvalShard, ImageDataset, TrainBatches, make_loader
from .transforms import EvalTransform, Normalizer, TrainTransform, eval_geometry, normalize, sample_rrc_params
