"""What every training-batch type shares: the per-epoch shuffle and sharding (``EpochBatches``), the registry
that maps a model's ``input_type`` to its type, and negative sampling with its checks.

Why batches instead of samples: the original builds every sample in Python (a negative per position by
rejection, one random call at a time), which costs more than the model on CPU. Here a batch is a few numpy
operations. Every batch draws its randomness from ``(seed, epoch, rank, batch index)``, so an epoch is the same
whatever the number of loader workers, and a resumed run replays exactly what an uninterrupted run would.
"""
from __future__ import annotations

import re

import numpy as np
import torch
from torch.utils.data import Dataset

from ...utils.registry import Registry
from ..interactions import DataError
from ..split import Split, sequence_chunk_users

TRAIN_DATASETS = Registry("training-example type", error=ValueError)  # input_type -> its EpochBatches class

_INPUT_TYPE = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*")


def names_for(input_type: str) -> tuple[str, str]:
    """(module, class) names a training-example type must have: ``HELD_OUT_ITEM`` -> (``held_out_item``,
    ``HeldOutItemBatches``). One spelling in three places, so finding any one of them finds the others."""
    return input_type.lower(), "".join(w.capitalize() for w in input_type.split("_")) + "Batches"


def register_train_dataset(input_type: str):
    """Map a model's ``input_type`` (NEXT_ITEM, PAIR, PREFIX, ...) to the class that builds its training batches.

    The class must declare ``item_keys`` (see ``EpochBatches``): PixelNet fetches covers for those keys only.
    Its module and class must be named after the type (``names_for``): the check runs here, at import, so the
    names cannot drift apart again as SEQ / train_batches.py / NextItemBatches once did.
    """
    def deco(cls):
        keys = getattr(cls, "item_keys", None)
        if not isinstance(keys, tuple) or not keys or not all(isinstance(k, str) for k in keys):
            raise TypeError(f"{cls.__name__} (input type {input_type!r}) must declare item_keys, the non-empty "
                            f"tuple of its batch keys whose values are item ids; got {keys!r}")
        if not isinstance(input_type, str) or not _INPUT_TYPE.fullmatch(input_type):
            raise ValueError(f"input type {input_type!r} of {cls.__name__} must be UPPER_SNAKE_CASE, e.g. NEXT_ITEM")
        module, name = names_for(input_type)
        where = f"{cls.__module__}.{cls.__qualname__}"
        if cls.__module__.rsplit(".", 1)[-1] != module or cls.__qualname__ != name:
            raise ValueError(f"input type {input_type!r} must be built by class {name} in a module {module}.py "
                             f"(the type's name in snake_case, and in CamelCase + 'Batches'); got {where}")
        TRAIN_DATASETS.add(input_type, cls)
        return cls
    return deco


def build_train_batches(input_type: str, split: Split, config, rank: int = 0, world_size: int = 1) -> "EpochBatches":
    return TRAIN_DATASETS.get(input_type)(split, config, rank=rank, world_size=world_size)


class EpochBatches(Dataset):
    """Shuffles examples per epoch, shards them across ranks and cuts this rank's share into batches.

    Sharding follows ``DistributedSampler`` (the permutation is padded by repeating its head so every rank
    gets the same number of batches, which DDP needs), but the permutation is seeded by the config seed
    instead of the original's fixed 0.
    """

    # The batch keys whose values are item ids (padding 0 and BERT4Rec's mask token included), declared by every
    # registered dataset. PixelNet reads the covers of exactly the items under these keys
    # (``REC.data.cover_batches``), so a key left out would have no cover and its lookup would fail. Other keys
    # (user ids, the bool ``target_mask``) are no items and pass through untouched.
    item_keys: tuple[str, ...]

    def __init__(self, n_examples: int, batch_size: int, seed: int, rank: int, world_size: int):
        self.n_examples, self.batch_size = n_examples, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self._batches: list[np.ndarray] = []
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_examples)
        per_rank = -(-self.n_examples // self.world_size)
        if per_rank * self.world_size > self.n_examples:
            perm = np.resize(perm, per_rank * self.world_size)
        mine = perm[self.rank::self.world_size]
        self._batches = [mine[i:i + self.batch_size] for i in range(0, len(mine), self.batch_size)]

    def __len__(self) -> int:
        return len(self._batches)

    def __getitem__(self, b: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, b])
        return self.make_batch(self._batches[b], rng)

    def make_batch(self, indices: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError


# Rejection accepts a cell with probability (allowed items outside its row) / (allowed items), at least 1/(L+1)
# for a row of L items that leaves one free, so 10,000 rounds fail by chance with odds below e^-40 for rows of up
# to 240 items: reaching the bound means the pool is (nearly) used up, never bad luck.
MAX_REDRAW_ROUNDS = 10_000


def draw_items(rng: np.random.Generator, item_num: int, pool: np.ndarray | None, size) -> np.ndarray:
    """``size`` items drawn uniformly from 1..item_num-1, or from ``pool`` (sorted item ids,
    ``Split.negative_pool()``). Every negative of every batch type comes from here, so they share one rule; with
    no pool this is the plain draw, so runs without a protocol keep the random stream they always had."""
    if pool is None:
        return rng.integers(1, item_num, size=size)
    return pool[rng.integers(0, len(pool), size=size)]


def allowed_count(item_num: int, pool: np.ndarray | None) -> int:
    """How many items a negative may be: 1..item_num-1, or the pool."""
    return item_num - 1 if pool is None else len(pool)


def rows_without_negative(avoid: np.ndarray, item_num: int, pool: np.ndarray | None = None) -> np.ndarray:
    """bool [B]: the rows of ``avoid`` ([B, L] item ids, 0 = padding) that hold every item a negative may be."""
    n_allowed = allowed_count(item_num, pool)
    if avoid.shape[1] < n_allowed:  # L items cannot cover more than L: the usual case costs nothing
        return np.zeros(len(avoid), dtype=bool)
    s = np.sort(avoid, 1)
    distinct = np.ones(s.shape, dtype=bool)
    distinct[:, 1:] = s[:, 1:] != s[:, :-1]
    allowed = (s >= 1) & (s < item_num) if pool is None else np.isin(s, pool)
    return (distinct & allowed).sum(1) >= n_allowed


def sample_negatives(rng: np.random.Generator, avoid: np.ndarray, item_num: int, per_row: int | None = None,
                     pool: np.ndarray | None = None) -> np.ndarray:
    """[B, per_row] uniform negatives from 1..item_num-1, none an item of its own row of ``avoid`` ([B, L]).

    ``per_row`` defaults to L (one negative per cell). ``pool`` (sorted item ids, ``Split.negative_pool()``)
    restricts the draw to those items, e.g. every item but the held-out ones of the cold_items protocol; None
    keeps the plain draw (``draw_items``), so the random stream, and every run without a protocol, is unchanged.
    Vectorised rejection sampling: redraw only the cells that hit their row, until none does (the original redrew
    per sample).

    A row that holds every allowed item has no negative, and rejection would never end (the original hangs):
    that raises a ValueError before any draw. The redraw rounds are bounded too (``MAX_REDRAW_ROUNDS``), so no
    input can make this loop forever.
    """
    n_allowed = allowed_count(item_num, pool)
    allowed = f"ids 1..{item_num - 1}" if pool is None else "the negative pool"
    full = rows_without_negative(avoid, item_num, pool)
    if full.any():
        r = int(np.flatnonzero(full)[0])
        raise DataError(f"no negative can be drawn for {int(full.sum())} of {len(avoid)} rows: each holds every "
                         f"one of the {n_allowed} items a negative may be ({allowed}); e.g. row {r} holds "
                         f"{sorted(set(avoid[r].tolist()) - {0})[:20]}")

    neg = draw_items(rng, item_num, pool, (len(avoid), avoid.shape[1] if per_row is None else per_row))
    bad = (neg[:, :, None] == avoid[:, None, :]).any(-1)
    rounds = 0
    while bad.any():
        if rounds == MAX_REDRAW_ROUNDS:
            r = int(np.flatnonzero(bad.any(1))[0])
            raise DataError(f"negative sampling gave up after {rounds} redraw rounds: {int(bad.sum())} cells still "
                             f"hit their own row (e.g. row {r}, which holds {len(set(avoid[r].tolist()) - {0})} "
                             f"distinct items; {n_allowed} items may be a negative, {allowed}); the negative pool "
                             f"is too small")
        rounds += 1
        rows, cols = np.nonzero(bad)
        neg[rows, cols] = draw_items(rng, item_num, pool, len(rows))
        bad[rows, cols] = (neg[rows, cols][:, None] == avoid[rows]).any(-1)
    return neg


def check_negatives_exist(split: Split, chunks: np.ndarray, max_len: int) -> None:
    """Raise before training when a training chunk (``sequence_chunks(split, max_len)``) holds every item a
    negative may be: the negatives of the sequence datasets avoid their chunk's items, so none could be drawn.
    Only a tiny catalogue, or a cold_items protocol that leaves few items, gets here; the message says which."""
    pool = split.negative_pool()
    full = rows_without_negative(chunks, split.item_num, pool)
    if not full.any():
        return
    total = split.item_num - 1
    if pool is None:
        allowed = f"all {total} items of the catalogue"
    else:
        settings = (split.protocol or {}).get("settings", {})
        how = ", ".join(f"{k}={settings[k]}" for k in ("cold_item_ratio", "cold_item_file") if settings.get(k))
        allowed = (f"the {len(pool)} of {total} items that the cold_items protocol does not hold out"
                   + (f" ({how})" if how else ""))
    user = sequence_chunk_users(split, max_len)[np.flatnonzero(full)[0]]
    raise DataError(f"{int(full.sum())} training chunks (e.g. one of internal user id {user}) hold every item a "
                     f"negative may be, {allowed}, so no negative exists for them and negative sampling could "
                     f"never end; use more items, a smaller cold_item_ratio or a smaller MAX_ITEM_LIST_LENGTH")


def check_negatives_possible(input_type: str, split: Split, config) -> None:
    """Before processes start: build the training examples once when some user's training part is at least as
    long as the pool of items a negative may be, the only case in which an example can hold every allowed item
    (each dataset then raises its clear error). Otherwise nothing is built: at full scale that would cost the
    launcher the memory of a whole training set."""
    lengths = np.diff(split.train_indptr)
    if len(lengths) and lengths.max() >= allowed_count(split.item_num, split.negative_pool()):
        build_train_batches(input_type, split, config)
