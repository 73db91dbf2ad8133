"""Data: reading image folders, the synthetic dataset, transforms and loaders."""
from .decode import IMAGE_EXTENSIONS, UnreadableImage, load_rgb, read_header
from .folder import DatasetIndex, Sample, SplitIndex, scan_dataset, scan_split
from .loader import Batch, EvalShard, ImageDataset, TrainBatches, make_loader
from .transforms import EvalTransform, TrainTransform, normalize, sample_rrc_params, eval_geometry
