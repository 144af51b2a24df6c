"""The config layer checked against the registered models.

``REC.config`` never imports model code (a model's defaults and whether it encodes covers reach it through a
``ModelCatalog``); this module is where the two meet, so that training, evaluation, prediction and feature
extraction all build their config the same way without any of them importing the others.
"""
from __future__ import annotations

from ..config import Config, ModelCatalog, load_config
from ..model import get_model_class, list_models, model_defaults_files

MODELS = ModelCatalog(defaults_files=model_defaults_files, names=list_models,
                      encodes_covers=lambda name: get_model_class(name).encodes_covers)


def build_config(layers, overrides=(), require_model: bool = True) -> Config:
    """The config from YAML files or in-memory ``ConfigLayer`` s (see ``load_config``); ``require_model=False``
    for tools that read only data and encoder keys (feature extraction)."""
    return load_config(layers, overrides, models=MODELS, require_model=require_model)
