"""Model registries, one per family, filled by a decorator (timm's ``register_model`` pattern).

``@register_model("IDNet")`` on a class makes ``model: <ClassName>`` in YAML pick it. A model's documented
hyper-parameter defaults are the ``<file>.yaml`` beside its module, over those of the registered model it
subclasses: ``MOSASRec(PixelItems, SASRec)`` has SASRec's defaults without a copy of them, and a
``mogru4rec.yaml`` beside ``MOGRU4Rec`` changes only the keys where it differs from GRU4Rec.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch

from ..utils.registry import Registry, import_submodules

FAMILIES = ("IDNet", "PixelNet", "ViNet")


class UnknownModelError(KeyError):
    def __str__(self):  # KeyError quotes its message; we want it readable
        return str(self.args[0])


def _import_all() -> None:
    """Import every model module once so that their decorators run (no name probing, unlike the original)."""
    for family in FAMILIES:
        import_submodules(f"REC.model.{family}")


MODELS = Registry("model", error=UnknownModelError, fill=_import_all)  # class name -> model class (its .family)


def register_model(family: str):
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; families are {FAMILIES}")

    def deco(cls):
        name = cls.__name__
        if not hasattr(cls, "input_type") or not (cls.input_type is None or isinstance(cls.input_type, str)):
            got = repr(cls.input_type) if hasattr(cls, "input_type") else "none"
            raise TypeError(f"model {name} must declare input_type, the name of its training examples "
                            f"(REC.data.training) or None when it is evaluated as built; got {got}")
        own = Path(importlib.import_module(cls.__module__).__file__).with_suffix(".yaml")
        inherited = next((vars(base)["defaults_files"] for base in cls.__mro__[1:] if "defaults_files" in vars(base)),
                         ())
        files = (*inherited, own) if own.is_file() else inherited
        if not files:
            raise ValueError(f"model {name} has no defaults file {own} and subclasses no registered model")
        MODELS.add(name, cls)
        cls.family, cls.defaults_files = family, files
        return cls
    return deco


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    return sorted(n for n in MODELS.names(pattern) if family is None or MODELS.get(n).family == family)


def get_model_class(name: str) -> type:
    return MODELS.get(name)


def model_defaults_files(name: str) -> tuple[Path, ...] | None:
    """The defaults YAMLs of a registered model, its ancestors' first (a later file's keys win), or None when
    the name is unknown (for the config layer)."""
    try:
        return get_model_class(name).defaults_files
    except UnknownModelError:
        return None


def create_model(name: str, config, dataset_info) -> "object":
    """The model ``name`` with the training objective ``config['loss']`` names (none for the paper's loss); with
    ``dataset_info.shapes_only`` on the meta device (no memory, nothing read)."""
    cls = get_model_class(name)
    if dataset_info.shapes_only:
        with torch.device("meta"):
            return _with_objective(cls(config, dataset_info), config, dataset_info)
    return _with_objective(cls(config, dataset_info), config, dataset_info)


def _with_objective(model, config, info):
    from .base import key_source
    from .objectives import build_objective
    loss = config["loss"] if "loss" in config else "paper"  # models built from a plain dict (tests) train as the paper
    counts = None
    if loss != "paper" and info.train_items is not None and not info.shapes_only:
        counts = np.bincount(np.asarray(info.train_items), minlength=model.objective_items)
    objective = build_objective({**{k: config[k] for k in OBJECTIVE_KEYS if k in config}, "loss": loss}, model,
                                counts, source=key_source(config, "loss"), allowed=info.negative_pool)
    if objective is not None:
        model.objective = objective
    return model


OBJECTIVE_KEYS = ("loss", "num_negatives", "negative_sampling", "temperature", "learn_temperature", "similarity")

