"""The frozen-prefix store: every item's output of an image encoder's frozen front, memory-mapped on disk.

PixelNet freezes the first blocks of its encoder (CLIP ViT-B/32 trains only the last 2 of 12), yet encoding a
cover runs them at every step of every epoch and again at every evaluation, for an output that never changes.
This file holds that output once per item; training and evaluation read rows from it and run only the
trainable rest (``REC.model.encoders.ItemEncoder.from_prefix``).

Files, in ``encoder_cache_dir`` (default: beside the prepared data), named by a key over everything that changes
the rows (``describe``: encoder, the frozen weights' hash, cover size and normalisation, where the cut falls,
dtype, the covers database, the run's item ids, library versions):

- ``prefix-<dataset>-<key>.npy``: ``[item_num, *shape]`` float32, or uint16 holding bfloat16 bits (numpy has no
  bfloat16); row i is item i, row 0 (padding) stays zero;
- ``prefix-<dataset>-<key>.done``: one byte per chunk of ``chunk`` items, 1 once its rows are on disk, so a
  killed build resumes where it stopped;
- ``prefix-<dataset>-<key>.json``: the description, shape, dtype, chunk and ``complete``.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from ..utils.files import write_text_atomic
from .interactions import DataError

FORMAT_VERSION = 1
DTYPES = {"float32": (np.float32, torch.float32), "bfloat16": (np.uint16, torch.bfloat16)}


class PrefixCacheError(DataError):
    """The store cannot be made (no room on its disk) or is not the one its description names."""


def cache_key(describe: dict) -> str:
    text = json.dumps({"format": FORMAT_VERSION, **describe}, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    raise AssertionError


def files_digest(path: Path) -> str:
    """Identity of a covers database without reading it: its files' names, sizes and modification times
    (generate_lmdb.py rewrites them, so regenerated covers get a new store)."""
    parts = []
    for f in sorted(path.iterdir()) if path.is_dir() else [path]:
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.blake2b("|".join(parts).encode(), digest_size=8).hexdigest()


class PrefixCache:
    """One store (see the module docstring). Rank 0 ``create``s it; every rank ``write``s the chunks it is given;
    readers (training loader workers, evaluation) call ``rows``. Picklable: each process maps the file itself."""

    batch_key = "cover_prefix"

    def __init__(self, folder: Path, dataset: str, describe: dict, item_num: int, shape: tuple[int, ...],
                 dtype: str, chunk: int):
        if dtype not in DTYPES:
            raise ValueError(f"prefix cache dtype {dtype!r} is not one of {sorted(DTYPES)}")
        self.describe, self.key = describe, cache_key(describe)
        self.item_num, self.shape, self.dtype, self.chunk = int(item_num), tuple(int(s) for s in shape), dtype, int(chunk)
        base = Path(folder) / f"prefix-{dataset}-{self.key}"
        self.path, self.done_path, self.meta_path = (base.with_suffix(s) for s in (".npy", ".done", ".json"))
        self._rows = None

    # ------------------------------------------------------------------------------------------- size
    @property
    def itemsize(self) -> int:
        return np.dtype(DTYPES[self.dtype][0]).itemsize

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape)) * self.itemsize

    @property
    def nbytes(self) -> int:
        return self.row_bytes * self.item_num

    @property
    def n_chunks(self) -> int:
        return -(-(self.item_num - 1) // self.chunk)

    def chunk_items(self, c: int) -> np.ndarray:
        return np.arange(1 + c * self.chunk, min(self.item_num, 1 + (c + 1) * self.chunk), dtype=np.int64)

    def check_room(self) -> None:
        """PrefixCacheError when the disk of the store's folder (or of its nearest existing parent, before the
        folder is made) has less free space than the rows need."""
        folder = self.path.parent
        while not folder.exists():
            folder = folder.parent
        free = shutil.disk_usage(folder).free
        if free < self.nbytes:
            raise PrefixCacheError(self._no_room_message(free))

    def _no_room_message(self, free: int) -> str:
        return (f"the encoder's frozen-prefix store needs {human_bytes(self.nbytes)} ({self.item_num - 1} items x "
                f"{' x '.join(map(str, self.shape))} x {self.itemsize} bytes) and "
                f"{self.path.parent} has {human_bytes(free)} free; set key 'encoder_cache_dir' to a folder on a "
                f"larger disk, or encoder_cache: off to encode every cover at every step instead")

    # ------------------------------------------------------------------------------------------- state
    @staticmethod
    def read_json(path: Path) -> dict | None:
        try:
            meta = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def read_meta(self) -> dict | None:
        return self.read_json(self.meta_path)

    @property
    def complete(self) -> bool:
        meta = self.read_meta()
        return bool(meta and meta.get("complete")) and self.path.is_file()

    def pending(self) -> list[int]:
        done = np.fromfile(self.done_path, dtype=np.uint8) if self.done_path.is_file() else np.zeros(0, np.uint8)
        if len(done) != self.n_chunks:
            return list(range(self.n_chunks))
        return np.flatnonzero(done == 0).tolist()

    def create(self) -> str:
        """Make the files unless a usable store (complete, or partly built with the same layout) is there;
        returns what was found: 'complete', 'partial' or 'new'. Refuses when the disk cannot hold the rows.
        Two runs that start together on one store take turns here, so neither truncates the other's rows."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._create()

    def _create(self) -> str:
        meta = self.read_meta()
        same = meta is not None and meta.get("key") == self.key and meta.get("shape") == list(self.shape) \
            and meta.get("dtype") == self.dtype and meta.get("chunk") == self.chunk and self.path.is_file() \
            and self.done_path.is_file() and self.path.stat().st_size >= self.nbytes
        if same:
            return "complete" if meta.get("complete") else "partial"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.check_room()
        rows = np.lib.format.open_memmap(self.path, mode="w+", dtype=DTYPES[self.dtype][0],
                                         shape=(self.item_num, *self.shape))
        del rows  # the file is sparse until rows are written; row 0 reads as zeros
        np.zeros(self.n_chunks, np.uint8).tofile(self.done_path)
        self._write_meta(complete=False)
        return "new"

    def write(self, c: int, rows: torch.Tensor) -> None:
        """Rows of chunk ``c`` (``chunk_items(c)`` in order), flushed before the chunk is marked done."""
        items = self.chunk_items(c)  # consecutive ids
        out = np.load(self.path, mmap_mode="r+")
        out[items[0]:items[-1] + 1] = self._to_numpy(rows)
        out.flush()
        del out
        with open(self.done_path, "r+b") as f:
            f.seek(c)
            f.write(b"\x01")
            f.flush()
            os.fsync(f.fileno())

    def finish(self) -> None:
        left = self.pending()
        if left:
            raise PrefixCacheError(f"{self.path}: chunks {left[:10]} of {self.n_chunks} were never written")
        self._write_meta(complete=True)

    def _write_meta(self, complete: bool) -> None:
        meta = dict(key=self.key, describe=self.describe, item_num=self.item_num, shape=list(self.shape),
                    dtype=self.dtype, chunk=self.chunk, complete=complete)
        write_text_atomic(self.meta_path, json.dumps(meta, indent=1, default=str))

    # ------------------------------------------------------------------------------------------- rows
    def _to_numpy(self, rows: torch.Tensor) -> np.ndarray:
        rows = rows.detach().to("cpu", DTYPES[self.dtype][1]).contiguous()
        return rows.view(torch.int16).numpy().view(np.uint16) if self.dtype == "bfloat16" else rows.numpy()

    def rows(self, ids) -> torch.Tensor:
        """``[len(ids), *shape]`` rows (torch float32 or bfloat16) of the given item ids."""
        if self._rows is None:
            self._rows = np.load(self.path, mmap_mode="r")
        out = torch.from_numpy(np.ascontiguousarray(self._rows[np.asarray(ids)]))
        return out.view(torch.bfloat16) if self.dtype == "bfloat16" else out

    def __getstate__(self):
        return {**self.__dict__, "_rows": None}  # a memory map is reopened by each process, never pickled
