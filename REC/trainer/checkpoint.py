"""Atomic checkpoint files: a crash mid-write leaves the previous file intact."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..utils.files import atomic_output, write_text_atomic


def save_atomic(obj, path: Path) -> None:
    with atomic_output(path, "wb") as f:
        torch.save(obj, f)


def write_json_atomic(obj, path: Path) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2))


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, or written by another process layout."""


def load(path: Path, device="cpu", mmap: bool = False):
    """The checkpoint at ``path``; :class:`CheckpointError` naming the file when it is not one (truncated by a
    full disk or an interrupted copy, overwritten): torch's own errors do not say which file. ``mmap`` maps the
    tensors instead of reading them, for a cheap look at the small entries of a large file."""
    try:
        # our checkpoints hold only tensors, numbers, strings, lists and dicts, so the safe loader suffices
        return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as exc:  # zip, pickle and EOF errors alike, depending on where the file was cut
        reason = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:160]  # torch appends advice
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt: {type(exc).__name__}"
                              f"{': ' + reason if reason else ''})") from None


def saved_world_size(path: Path) -> int | None:
    """The number of processes that wrote ``last.pth`` (None: written before it was recorded)."""
    return load(path, mmap=True).get("world_size")


def state_digest(model: torch.nn.Module) -> str:
    """A hash of every tensor of ``model``'s state: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]
