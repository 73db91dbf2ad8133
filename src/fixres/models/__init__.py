"""Models: creation from timm names and local weights (and the paper's models timm lacks)."""
from .factory import check_model_name, create_model, model_with_weights, read_state_dict
from .paper import RESNEXT_WSL, register_paper_models
