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
from .split import EvalSplit, Split

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


ALIGN = 64  # bytes: every array of a packed file starts on a cache line, so each view is aligned for its dtype


def shared_split(config, build: Callable[[], Split], inter) -> Split:
    """``build()``'s split, every array of it shared by the ranks of a node the way ``shared_on_node`` shares one:
    rank 0 builds the split and writes its arrays as one file; the other ranks map that file and never build a
    split of their own (at 2M users that is about 370 MB per rank for a moment and 150 MB to keep; at 30M users
    over 2 GB). Arrays that are the interactions' own (memory-mapped already, e.g. the histories' items) stay
    references to this rank's ``inter``."""
    if dist.world_size() == 1:
        return build()
    references = {"items": inter.items, "users": inter.users}
    built = {}

    def packed() -> np.ndarray:
        split = built["split"] = build()
        if dist.rank() != 0:  # a rank that cannot see rank 0's file keeps its own split, unpacked
            return np.zeros(0, dtype=np.uint8)
        arrays = []
        built["skeleton"] = _skeleton(split, references, arrays, {})
        return _pack(arrays, built)

    table = shared_on_node("split", config, packed)
    skeleton = dist.broadcast_object(built.get("skeleton"))  # rank 0's: every rank that built has the same
    if dist.rank() != 0 and "split" in built:
        return built["split"]  # this rank could not see rank 0's file and built its own
    built.clear()  # rank 0's own copy goes; the mapped one serves
    return _rebuild(skeleton, table, references)


def _skeleton(obj, references: dict, arrays: list, seen: dict) -> dict:
    """A split (or one of its EvalSplits) with each array field named by where it is found: one of the
    ``references`` (by name), or an entry of ``arrays``, appended once per array object (validation and test
    share their users and history starts: ``seen`` maps id(array) to its entry)."""
    from dataclasses import fields, is_dataclass
    out = {"class": type(obj).__name__, "fields": {}}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            out["fields"][f.name] = ("part", _skeleton(value, references, arrays, seen))
        elif isinstance(value, np.ndarray):
            ref = next((name for name, array in references.items() if value is array), None)
            if ref is not None:
                out["fields"][f.name] = ("reference", ref)
            else:
                if id(value) not in seen:
                    arrays.append(value)
                    seen[id(value)] = len(arrays) - 1
                out["fields"][f.name] = ("array", seen[id(value)])
        else:
            out["fields"][f.name] = ("value", value)
    return out


def _pack(arrays: list[np.ndarray], built: dict) -> np.ndarray:
    """The arrays' bytes in one uint8 array, each at an ALIGN-byte offset; their places go into the skeleton."""
    places, offset = [], 0
    for a in arrays:
        places.append((offset, a.dtype.str, a.shape))
        offset += -(-a.nbytes // ALIGN) * ALIGN
    out = np.zeros(offset, dtype=np.uint8)
    for a, (start, _, _) in zip(arrays, places):
        out[start:start + a.nbytes] = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    built["skeleton"]["places"] = places
    return out


def _rebuild(skeleton: dict, table: np.ndarray, references: dict):
    classes = {"Split": Split, "EvalSplit": EvalSplit}
    places = skeleton["places"]

    def make(part: dict):
        values = {}
        for name, (kind, what) in part["fields"].items():
            if kind == "part":
                values[name] = make(what)
            elif kind == "reference":
                values[name] = references[what]
            elif kind == "array":
                start, dtype, shape = places[what]
                size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                values[name] = table[start:start + size].view(dtype).reshape(shape)
            else:
                values[name] = what
        return classes[part["class"]](**values)

    return make(skeleton)
