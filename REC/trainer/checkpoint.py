"""Atomic checkpoint files: a crash mid-write leaves the previous file intact."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def _atomic(path: Path, write) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_atomic(obj, path: Path) -> None:
    _atomic(path, lambda f: torch.save(obj, f))


def write_json_atomic(obj, path: Path) -> None:
    _atomic(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def load(path: Path, device="cpu"):
    # our checkpoints hold only tensors, numbers, strings, lists and dicts, so the safe loader suffices
    return torch.load(path, map_location=device, weights_only=True)
