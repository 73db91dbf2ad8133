"""Training at a chosen (low) resolution with today's recipes (timm's augmentations, EMA,
progressive resizing), resumable bit-exactly, on one process or under torchrun."""
from .config import TrainConfig
from .loop import TrainResult, fit

__all__ = ["TrainConfig", "TrainResult", "fit"]
