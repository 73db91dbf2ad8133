"""What leaves fixres: a timm-loadable export (and ONNX) with its test preprocessing, and predictions."""
from .export import export_checkpoint, read_export
from .predict import classify, load_classifier, predict

__all__ = ["classify", "export_checkpoint", "load_classifier", "predict", "read_export"]
