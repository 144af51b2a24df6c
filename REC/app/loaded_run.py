"""A run directory brought back to life: its config, its data through its own vocabulary, its model with a
checkpoint's weights. Training's resume, ``REC.app.evaluate``, ``REC.app.predict`` and the tests all start here, so a run
is read back one way (the same ids, the same warnings, the same checks that the weights fit)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config, ConfigError
from .configure import build_config
from ..data import Interactions, Split, prepare_run_split
from ..data.vocabulary import DataCheck
from ..model import create_model
from ..model.base import DatasetInfo
from ..trainer.checkpoint import load_weights
from ..utils.run_layout import BEST_CHECKPOINT, CONFIG_FILE, RunDir

log = logging.getLogger(__name__)


def load_run_config(run_dir: str | Path) -> Config:
    """The merged config a run trained with (its ``config.yaml``)."""
    path = RunDir(run_dir).config
    if not path.is_file():
        raise ConfigError(f"{str(run_dir)!r}: no {CONFIG_FILE} there; expected a run directory made by main.py")
    return build_config([path])


@dataclass
class LoadedRun:
    run_dir: Path
    config: Config
    inter: Interactions
    split: Split
    data_check: DataCheck       # how today's CSV compares with the one the run was trained on
    model: torch.nn.Module      # on the device; with the checkpoint's weights when one was named
    checkpoint: dict | None     # the loaded checkpoint (None: fresh weights, e.g. training before resume)


def load_run(run_dir: str | Path, device: torch.device, checkpoint: str | None = BEST_CHECKPOINT,
             config: Config | None = None) -> LoadedRun:
    """Read a run back: the CSV through the run's vocabulary (a changed CSV is said in a warning; refusing it is
    the caller's choice), the model built from the run's config on ``device`` in the memory format its encoder
    prefers there, and ``checkpoint``'s weights (a file of the run directory; None leaves the model as built).
    ``config``: the run's config when the caller has read it already."""
    run_dir = Path(run_dir)
    config = config if config is not None else load_run_config(run_dir)
    inter, split, check = prepare_run_split(config, run_dir)  # one file-backed copy per node for all its ranks
    if check.worth_a_warning:
        log.warning("%s", check.describe(run_dir))
    info = DatasetInfo.from_split(split, item_ids=inter.item_tokens.digest())
    model = create_model(config["model"], config, info).to(device)
    if model.encodes_covers and hasattr(model.cover_items_module.visual_encoder, "use_layout_for"):
        model.cover_items_module.visual_encoder.use_layout_for(device)  # the encoders' one channels_last rule
    ckpt = None
    if checkpoint is not None:
        ckpt = load_weights(model, RunDir(run_dir).checkpoint(checkpoint), run_dir)
    return LoadedRun(run_dir, config, inter, split, check, model, ckpt)
