"""Where a backbone's starting weights come from: random init, a local file (``encoder_weights``) or the hub.

Nothing is fetched at import time, when ``encoder_pretrained`` is false, or when the model is built for a shape
check only (the launcher's preflight, on the meta device); a named local file is still checked there, so a typo
fails before training.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from REC.config import ConfigError


@dataclass(frozen=True)
class Weights:
    pretrained: bool
    path: str | None = None
    where: str = "key 'encoder_weights'"  # how errors name the setting (with its file when known)
    read: bool = True  # False for a shape check only: the backbone keeps its (meta) random init

    @property
    def load(self) -> bool:
        """Whether weights are to be read now."""
        return self.pretrained and self.read

    def local_file(self) -> Path | None:
        """The local weights file, checked to exist; None means the hub."""
        if not self.pretrained or self.path is None:
            return None
        path = Path(self.path).expanduser()
        if not path.is_file():
            raise ConfigError(f"{self.where}: weights file {str(path)!r} does not exist")
        return path

    def hub_error(self, encoder: str, source: str, exc: Exception) -> ConfigError:
        return ConfigError(
            f"{encoder}: could not fetch the pretrained weights ({source}) from the hub: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}. Download them on a machine with internet access and "
            f"set encoder_weights: <file> (or encoder_pretrained: false to start from random weights)")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, a ``torch.save`` file (bare, or nested under ``state_dict``) or a
    TorchScript archive such as OpenAI's CLIP ``.pt`` files, which ``torch.load(weights_only=True)`` refuses."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    if _is_torchscript(path):
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: not a state dict (found {type(state).__name__})")
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP-wrapped model
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(name.endswith("/constants.pkl") for name in z.namelist())
