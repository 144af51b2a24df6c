"""Arrays every process of a job needs whole, built once and shared through a memory-mapped file.

Each rank of a DDP job draws its batches from the whole table of training examples (an epoch's shuffle spans all
of them), so with N processes a node held N private copies of it (at 32M interactions and M = 50, 400 MB each).
Here rank 0 builds the table and writes it beside the prepared data, named by the hash of its content; the other
ranks map that file (the page cache holds it once) after checking that its bytes hash to the name, and build
their own only where they cannot see the file (another node without the folder, a read-only folder)."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from .. import distributed as dist
from ..utils.files import atomic_output
from .interactions import prepared_data_dir

log = logging.getLogger(__name__)


def content_digest(array: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{array.dtype.str}{array.shape}".encode())
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    for start in range(0, len(flat), 1 << 26):
        h.update(flat[start:start + (1 << 26)])
    return h.hexdigest()


def shared_on_node(name: str, config, build: Callable[[], np.ndarray]) -> np.ndarray:
    """``build()``'s array; with several processes, rank 0's, memory-mapped by every rank that sees the run's
    prepared-data folder (``data_path``, ``dataset``, ``cache_dir`` of ``config``: a file ``<name>-<content
    hash>.npy`` there, kept for later runs of the same data and settings)."""
    if dist.world_size() == 1:
        return build()
    array, where = None, None
    if dist.rank() == 0:
        array = build()
        digest = content_digest(array)
        path = prepared_data_dir(config["data_path"], config["dataset"], config["cache_dir"]) / f"{name}-{digest}.npy"
        try:
            if not path.is_file() or content_digest(np.load(path, mmap_mode="r")) != digest:
                path.parent.mkdir(parents=True, exist_ok=True)  # missing, or damaged since it was written
                with atomic_output(path, "wb") as f:
                    np.save(f, array)
            where = (str(path), digest)
        except OSError as exc:
            log.warning("could not write %s (%s); every process builds its own %s", path, exc, name)
    where = dist.broadcast_object(where)
    if where is None:
        return array if array is not None else build()
    path, digest = Path(where[0]), where[1]
    if dist.rank() == 0:
        return np.load(path, mmap_mode="r")  # written, or checked, by this process just now
    if not path.is_file():  # another node, without the folder
        return build()
    mapped = np.load(path, mmap_mode="r")
    if content_digest(mapped) != digest:
        log.warning("%s does not hold what its name says (damaged?); this process builds its own %s", path, name)
        return build()
    return mapped
