"""Covers for PixelNet: the pixels of every item a training batch names, and every item's cover for evaluation.

Pixels travel as uint8 (a quarter of float32's bytes through the loader, pinned memory and the host-to-device
copy); the model converts and normalises them on its device (``REC.model.pixel.CoverItems``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import ConfigError
from .covers import DEFAULT_NAME, CoverStore
from .eval_batches import shard_bounds
from ..utils.batch_keys import COVERS, COVER_IDS


def cover_lmdb_path(config) -> Path:
    """``cover_lmdb``, or ``<data_path>/covers.lmdb`` where generate_lmdb.py writes by default."""
    return Path(config["cover_lmdb"] or Path(config["data_path"]) / DEFAULT_NAME)


def check_covers(config, inter) -> None:
    """Every item of the dataset must have a cover: a missing one would stop training at the first batch or
    evaluation that names it (the original crashes there), and feature extraction hours into its run."""
    store = CoverStore(cover_lmdb_path(config), inter.item_tokens)
    missing = store.missing(np.arange(1, inter.item_num))
    if len(missing):
        first = ", ".join(inter.item_tokens[int(i)] for i in missing[:10])
        raise ConfigError(f"covers database {str(cover_lmdb_path(config))!r} (key 'cover_lmdb') has no cover for "
                          f"{len(missing)} of the {inter.item_num - 1} items of dataset {config['dataset']!r}, e.g. "
                          f"{first}; run generate_lmdb.py for this dataset and fix the images its report lists")


class BatchesWithCovers(Dataset):
    """A training batch plus {'cover_ids': [U] its distinct real item ids, ascending, 'covers': uint8 [U, 3, H, W]}.

    Each distinct item is read and encoded once per batch however often the batch names it (a SASRec batch of
    64 chunks names up to 1,408 items with their negatives); its vector is then gathered for every position, so
    the gradient is the same sum over positions as encoding each position separately.

    The items are those under the wrapped dataset's ``item_keys``; a model that looks up an id outside
    ``cover_ids`` fails loudly (``REC.model.pixel.MissingCoverError``) instead of reading a neighbour's cover.

    With a frozen-prefix store (``prefix``, a ``REC.data.prefix_cache.PrefixCache``) the batch carries
    ``cover_prefix``, the stored rows of those items, in place of ``covers``.
    """

    def __init__(self, batches, store, item_num: int, prefix=None):
        self.batches, self.store, self.item_num, self.prefix = batches, store, item_num, prefix
        # the dataset's own declaration (REC.data.training.base.EpochBatches.item_keys), not a list kept here
        self.item_keys = getattr(batches, "item_keys", None)
        if not self.item_keys:
            raise TypeError(f"{type(batches).__name__} declares no item_keys (its batch keys that hold item ids), "
                            f"so the items whose covers a batch needs are unknown")

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def distinct_items(self, batch: dict[str, torch.Tensor], keys: tuple[str, ...] | None = None) -> torch.Tensor:
        """The real item ids under ``keys`` (default: every item key) of ``batch``, distinct and ascending."""
        keys = self.item_keys if keys is None else keys
        absent = [k for k in keys if k not in batch]
        if absent:
            raise KeyError(f"{type(self.batches).__name__} declares item_keys {self.item_keys}, but its batch has "
                           f"no {absent} (its keys: {sorted(batch)})")
        ids = torch.cat([batch[k].reshape(-1) for k in keys]).unique()
        return ids[(ids > 0) & (ids < self.item_num)]

    def describe_step(self, shared_key: str | None = None) -> str:
        """The launch line saying how many covers a training step encodes, counted on the first batch (ids only,
        no cover read); with ``shared_key``, how many of them the shared negatives add."""
        if len(self) == 0:
            return "PixelNet: no training batch"
        batch = self.batches[0]
        total = len(self.distinct_items(batch))
        line = f"PixelNet: a training step encodes the cover of each distinct item it names once: {total:,} in the first batch"
        if shared_key is not None:
            own = len(self.distinct_items(batch, tuple(k for k in self.item_keys if k != shared_key)))
            line += (f" ({own:,} named by the batch, {total - own:,} more from its {batch[shared_key].numel():,} "
                     f"shared negatives)")
        return line

    def __getitem__(self, b: int) -> dict[str, torch.Tensor]:
        batch = self.batches[b]
        ids = self.distinct_items(batch)
        batch[COVER_IDS] = ids
        if self.prefix is not None:
            batch[self.prefix.batch_key] = self.prefix.rows(ids.numpy())
        else:
            batch[COVERS] = torch.from_numpy(self.store.get(ids.numpy()))
        return batch


class ItemCoverBatches(Dataset):
    """This rank's contiguous share of the items 1..item_num-1, in order, as batches ``{"covers": uint8
    [n, 3, H, W]}``, or ``{"cover_prefix": rows}`` from a frozen-prefix store (``prefix``).

    Evaluation encodes each share on its own rank and gathers the rows (the original encoded every item on
    every rank).
    """

    def __init__(self, store, item_num: int, batch_size: int, rank: int = 0, world_size: int = 1, prefix=None):
        self.store, self.batch_size, self.prefix = store, batch_size, prefix
        n = item_num - 1
        self.counts = [b - a for a, b in (shard_bounds(n, r, world_size) for r in range(world_size))]
        start, stop = shard_bounds(n, rank, world_size)
        self.ids = np.arange(start + 1, stop + 1, dtype=np.int64)

    def __len__(self) -> int:
        return -(-len(self.ids) // self.batch_size)

    def __getitem__(self, b: int) -> dict[str, torch.Tensor]:
        ids = self.ids[b * self.batch_size:(b + 1) * self.batch_size]
        if self.prefix is not None:
            return {self.prefix.batch_key: self.prefix.rows(ids)}
        return {COVERS: torch.from_numpy(self.store.get(ids))}


class ChunkCovers(Dataset):
    """(chunk index, uint8 covers ``[n, 3, H, W]`` of its items) for the given chunks of a per-item array being
    built (``REC.data.item_array.ItemArrayFile``): the frozen-prefix store and the feature files both encode the
    covers a chunk at a time, in a loader's workers."""

    def __init__(self, array_file, store: CoverStore, chunks: list[int]):
        self.array_file, self.store, self.chunks = array_file, store, list(chunks)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int):
        c = self.chunks[i]
        return c, torch.from_numpy(self.store.get(self.array_file.chunk_items(c)))
