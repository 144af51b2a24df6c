"""Optional live logging of a run to TensorBoard (``log_tensorboard``) and Weights & Biases (``log_wandb``).

Neither package is a dependency: training never needs them, so they are imported only when their key is on,
and ``check_live_log`` turns a missing one into a ConfigError in the preflight, before any data is read, rather
than an ImportError after the model is built. Only rank 0 logs (every rank holds the same reduced metrics; N
writers would duplicate each point). result.json stays the record of a run; these are views while it trains.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path

from .. import distributed as dist
from ..config import ConfigError

log = logging.getLogger(__name__)
TENSORBOARD_DIR = "tensorboard"
_PACKAGES = {"log_tensorboard": ("tensorboard", "tensorboard"), "log_wandb": ("wandb", "wandb")}


def _missing(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:  # also a sys.modules entry set to None
        return True
    return False


def check_live_log(config) -> None:
    for key, (module, package) in _PACKAGES.items():
        if config[key] and _missing(module):
            raise ConfigError(f"{config.source_of(key)}: {key}: true needs the {package} package (pip install "
                              f"{package}); or set {key}: false")


class LiveLog:
    """Fans each call out to the writers that are on; with none, every call does nothing."""

    def __init__(self, writers=()):
        self.writers = list(writers)

    def log_epoch(self, epoch: int, record: dict) -> None:
        """``record``: the trainer's per-epoch history entry (train_loss, train_seconds, valid, eval_seconds)."""
        scalars = {}
        for key in ("train_loss", "train_seconds", "eval_seconds"):
            if record.get(key) is not None:
                scalars[key.replace("_", "/", 1)] = record[key]
        scalars.update({f"valid/{k}": v for k, v in (record.get("valid") or {}).items() if v is not None})
        for w in self.writers:
            w.scalars(scalars, epoch)

    def log_test(self, metrics: dict, epoch: int | None = None) -> None:
        scalars = {f"test/{k}": v for k, v in metrics.items() if v is not None}
        for w in self.writers:
            w.scalars(scalars, epoch or 0)

    def close(self) -> None:
        for w in self.writers:
            try:
                w.close()
            except Exception as exc:  # a logging service that fails at the end must not fail a finished run
                log.warning("closing %s failed: %s", type(w).__name__, exc)


class TensorBoardWriter:
    def __init__(self, log_dir: Path, summary_writer=None):
        """``summary_writer``: a stand-in class for tests; torch's SummaryWriter otherwise."""
        if summary_writer is None:
            from torch.utils.tensorboard import SummaryWriter as summary_writer
        self.writer = summary_writer(log_dir=str(log_dir))

    def scalars(self, values: dict, step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()  # a run watched live: each epoch visible as soon as it ends

    def close(self) -> None:
        self.writer.close()


class WandbWriter:
    def __init__(self, config, run_dir: Path):
        import wandb
        self.wandb = wandb
        self.run = wandb.init(project=config["wandb_project"], name=Path(run_dir).name, dir=str(run_dir),
                              config=config.to_dict())

    def scalars(self, values: dict, step: int) -> None:
        self.run.log({**values, "epoch": step})

    def close(self) -> None:
        self.run.finish()


def open_live_log(config, run_dir: Path, summary_writer=None) -> LiveLog:
    if not dist.is_main():
        return LiveLog()
    writers = []
    if config["log_tensorboard"]:
        writers.append(TensorBoardWriter(Path(run_dir) / TENSORBOARD_DIR, summary_writer))
    if config["log_wandb"]:
        writers.append(WandbWriter(config, run_dir))
    return LiveLog(writers)
