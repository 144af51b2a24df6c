from .registry import FAMILIES, create_model, get_model_class, list_models, model_defaults_files, register_model

__all__ = ["FAMILIES", "create_model", "get_model_class", "list_models", "model_defaults_files", "register_model"]
