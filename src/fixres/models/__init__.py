"""Models: creation from timm names and local weights."""
from .factory import check_model_name, create_model, load_weights, model_preprocessing, read_state_dict
