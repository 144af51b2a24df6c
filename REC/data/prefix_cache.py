"""The frozen-prefix store: every item's output of an image encoder's frozen front, memory-mapped on disk.

PixelNet freezes the first blocks of its encoder (CLIP ViT-B/32 trains only the last 2 of 12), yet encoding a
cover runs them at every step of every epoch and again at every evaluation, for an output that never changes.
This file holds that output once per item; training and evaluation read rows from it and run only the
trainable rest (``REC.model.encoders.ItemEncoder.from_prefix``).

The store is a per-item array file (``REC.data.item_array``: rows, description, item ids; built in chunks,
resumable after a kill, each chunk's CRC-32 checked before its rows are used), in ``encoder_cache_dir``
(default: beside the prepared data), named ``prefix-<dataset>-<key>.npy`` by a key over everything that changes
the rows (``describe``: encoder, the frozen weights' hash, cover size and normalisation, where the cut falls,
dtype, the covers database, the run's item ids, library versions). Rows are float32, or uint16 holding bfloat16
bits (numpy has no bfloat16). The launcher checks every chunk once, sharded over the ranks, before training
(``REC.app.prefix_store``). Opening a complete store takes no lock and writes nothing, so a store prepared once can
be shared from a read-only folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from ..utils.batch_keys import COVER_PREFIX
from .interactions import DataError
from .item_array import ItemArrayError, ItemArrayFile, ItemIdentity

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 3: the shared per-item array layout; a store of version 2 gets a new key and is rebuilt


class PrefixCacheError(ItemArrayError, DataError):
    """The store cannot be made (no room on its disk) or is not the one its description names."""


def cache_key(describe: dict) -> str:
    text = json.dumps({"format": FORMAT_VERSION, **describe}, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def files_digest(path: Path) -> str:
    """Identity of a covers database without reading it: its files' names, sizes and modification times
    (generate_lmdb.py rewrites them, so regenerated covers get a new store)."""
    parts = []
    for f in sorted(path.iterdir()) if path.is_dir() else [path]:
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.blake2b("|".join(parts).encode(), digest_size=8).hexdigest()


class PrefixCache(ItemArrayFile):
    """One store (see the module docstring). Rank 0 ``create``s it; every rank ``write``s the chunks it is given;
    readers (training loader workers, evaluation) call ``rows``.

    ``chunk`` (the run's ``cover_batch_size``) is how many items a done mark covers in a NEW store; a store found on
    disk keeps its own (``create`` adopts it)."""

    batch_key = COVER_PREFIX
    error = PrefixCacheError
    other_builds_are_errors = False  # the key names the rows: a build under it that differs is of an older layout

    def __init__(self, folder: Path, dataset: str, describe: dict, item_num: int, shape: tuple[int, ...],
                 dtype: str, chunk: int):
        self.describe, self.key = describe, cache_key(describe)
        identity = ItemIdentity(dataset, describe.get("item_ids"), item_num)
        super().__init__(Path(folder) / f"prefix-{dataset}-{self.key}.npy", identity, "prefix-store", shape, dtype,
                         chunk, settings={"key": self.key, "describe": describe},
                         room_hint="set key 'encoder_cache_dir' to a folder on a larger disk, or encoder_cache: off "
                                   "to encode every cover at every step instead")

    @property
    def what(self) -> str:
        return f"the encoder's frozen-prefix store {self.path}"
