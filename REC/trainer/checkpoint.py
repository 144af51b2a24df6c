"""Atomic checkpoint files: a crash mid-write leaves the previous file intact."""
from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import torch

from ..utils.files import atomic_output, write_text_atomic
from ..utils.errors import UserError
from ..utils.run_layout import RUN_ID_FILE


def save_atomic(obj, path: Path) -> None:
    with atomic_output(path, "wb") as f:
        torch.save(obj, f)


def write_json_atomic(obj, path: Path) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2))


class CheckpointError(UserError, ValueError):
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




def new_run_id(run_dir: Path) -> str:
    """Give a fresh run directory its identity, which every checkpoint it writes carries: weights of the same
    shapes from another run (a copied ``best.pth``, a ``--checkpoint`` pointing elsewhere) would otherwise be
    evaluated, or resumed, as if they were this run's."""
    run_id = uuid.uuid4().hex
    write_text_atomic(Path(run_dir) / RUN_ID_FILE, run_id + "\n")
    return run_id


def read_run_id(run_dir: Path) -> str | None:
    """The run's identity; None for a run directory made before runs had one."""
    path = Path(run_dir) / RUN_ID_FILE
    return path.read_text().strip() or None if path.is_file() else None


def check_belongs(ckpt: dict, path: Path, run_dir: Path) -> None:
    """``ckpt`` (loaded from ``path``) was written by the run of ``run_dir``. A run made before runs had an
    identity, with a checkpoint that has none either, cannot be checked and passes."""
    mine, theirs = read_run_id(run_dir), ckpt.get("run_id")
    if mine == theirs:
        return
    whose = f"run {theirs}" if theirs else "a run without an identity (an older version, or a file made by hand)"
    raise CheckpointError(f"{path} does not belong to run directory {str(run_dir)!r}: it was written by {whose}, "
                          f"and this run is {mine or 'one without an identity'} (its {RUN_ID_FILE} file); its "
                          f"metrics would not be this run's. Evaluate that checkpoint from its own run directory")


def load_weights(model: torch.nn.Module, path: Path, run_dir: Path, device="cpu") -> dict:
    """Load ``path``'s weights into ``model`` after checking that it is this run's checkpoint and that its
    tensors fit the model built from the run's config (a config.yaml edited after training, e.g. another
    ``embedding_size``); returns the checkpoint."""
    ckpt = load(path, device)
    check_belongs(ckpt, path, run_dir)
    if not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path}: a checkpoint without model weights; expected best.pth or last.pth of a run")
    fit_state(model, ckpt["model"], path)
    return ckpt


def fit_state(model: torch.nn.Module, state: dict, path: Path) -> None:
    """``model.load_state_dict(state)``, with a message naming the file and the first tensors that differ instead
    of torch's list of every mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or shapes:
        parts = [f"{k}: checkpoint {list(a)}, model {list(b)}" for k, a, b in shapes[:3]]
        parts += [f"missing {', '.join(missing[:3])}"] if missing else []
        parts += [f"unexpected {', '.join(extra[:3])}"] if extra else []
        raise CheckpointError(f"{path}: its weights do not fit the model built from the run's config.yaml "
                              f"({'; '.join(parts)}); was config.yaml edited after training?")
    model.load_state_dict(state)


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
