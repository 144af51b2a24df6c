"""AdamW with two parameter groups: the image encoder ("modal") and the rest ("rec"), as the original.

``optim_args`` is either ``{learning_rate, weight_decay}`` (both groups alike) or
``{modal_lr, modal_decay, rec_lr, rec_decay}``. A parameter belongs to the encoder group when it lies inside one
of the modules named by ``encoder_modules`` (``[visual_encoder]`` by default; VBPR's projections). For IDNet the encoder group is
empty. Weight decay applies to every parameter of a group, embeddings and norms included, as the original.
"""
from __future__ import annotations

import logging

import torch

from ..config import ConfigError
from .row_sparse import RowSparseAdamW

log = logging.getLogger(__name__)


def group_settings(optim_args) -> dict[str, dict[str, float]]:
    if "learning_rate" in optim_args:
        same = {"lr": optim_args["learning_rate"], "weight_decay": optim_args["weight_decay"]}
        return {"modal": dict(same), "rec": dict(same)}
    return {"modal": {"lr": optim_args["modal_lr"], "weight_decay": optim_args["modal_decay"]},
            "rec": {"lr": optim_args["rec_lr"], "weight_decay": optim_args["rec_decay"]}}


def in_encoder(param_name: str, encoder_modules) -> bool:
    """Whether a parameter (or state-dict entry) lies inside one of ``encoder_modules``: one of the module names
    on its dotted path is listed. Whole names, not substrings, so ``visual_encoder`` never catches a
    ``visual_encoder_gate`` beside it; a DDP ``module.`` wrapper changes nothing."""
    return not set(param_name.split(".")[:-1]).isdisjoint(encoder_modules)


def build_optimizer(model: torch.nn.Module, config) -> torch.optim.Optimizer:
    settings = group_settings(config["optim_args"])
    encoder_modules = config["encoder_modules"]
    params = {"modal": [], "rec": [], "objective": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            group = "objective" if name.split(".")[0] == "objective" else \
                "modal" if in_encoder(name, encoder_modules) else "rec"
            params[group].append(p)
    # a learned softmax temperature (REC.model.objectives) takes the rec learning rate and no weight decay: decay
    # would pull its logarithm to 0, i.e. the temperature to 1, whatever the data says
    settings["objective"] = {"lr": settings["rec"]["lr"], "weight_decay": 0.0}
    log.info("optimizer groups: modal %d tensors (%s), rec %d tensors (%s)%s",
             len(params["modal"]), settings["modal"], len(params["rec"]), settings["rec"],
             f", objective {len(params['objective'])} ({settings['objective']})" if params["objective"] else "")
    groups = [{"params": params[g], "name": g, **settings[g]} for g in ("modal", "rec", "objective") if params[g]]
    if not groups:
        raise ConfigError("the model has no trainable parameters (nothing for the optimizer to train)")
    if any(getattr(p, "_row_sparse_table", False) for g in groups for p in g["params"]):
        log.info("item_table_updates: sparse: a step moves only the ID-table rows it touched (lazy AdamW)")
        return RowSparseAdamW(groups, betas=(0.9, 0.999), eps=1e-8)
    # fused AdamW does the whole update in one kernel per device; identical maths to the for-loop version
    return torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8, fused=True)
