"""Training batches, built whole and vectorised: one ``__getitem__`` is one batch.

Why batches instead of samples: the original builds every sample in Python (a negative per position by
rejection, one random call at a time), which costs more than the model on CPU. Here a batch is a few numpy
operations. Every batch draws its randomness from ``(seed, epoch, rank, batch index)``, so an epoch is the same
whatever the number of loader workers, and a resumed run replays exactly what an uninterrupted run would.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .split import Split, sequence_chunks

TRAIN_DATASETS: dict[str, Callable[..., "EpochBatches"]] = {}


def register_train_dataset(input_type: str):
    """Map a model's ``input_type`` (SEQ, PAIR, AUGSEQ, ...) to the class that builds its training batches."""
    def deco(cls):
        if input_type in TRAIN_DATASETS:
            raise ValueError(f"input type {input_type!r} is already registered to {TRAIN_DATASETS[input_type]}")
        TRAIN_DATASETS[input_type] = cls
        return cls
    return deco


def build_train_batches(input_type: str, split: Split, config, rank: int = 0, world_size: int = 1) -> "EpochBatches":
    try:
        cls = TRAIN_DATASETS[input_type]
    except KeyError:
        raise ValueError(f"no training dataset for input type {input_type!r}; known: {sorted(TRAIN_DATASETS)}") from None
    return cls(split, config, rank=rank, world_size=world_size)


class EpochBatches(Dataset):
    """Shuffles examples per epoch, shards them across ranks and cuts this rank's share into batches.

    Sharding follows ``DistributedSampler`` (the permutation is padded by repeating its head so every rank
    gets the same number of batches, which DDP needs), but the permutation is seeded by the config seed
    instead of a fixed 0 (spec 9.6).
    """

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


def sample_negatives(rng: np.random.Generator, avoid: np.ndarray, item_num: int, per_row: int | None = None,
                     pool: np.ndarray | None = None) -> np.ndarray:
    """[B, per_row] uniform negatives from 1..item_num-1, none an item of its own row of ``avoid`` ([B, L]).

    ``per_row`` defaults to L (one negative per cell). ``pool`` (sorted item ids, ``Split.negative_pool()``)
    restricts the draw to those items, e.g. every item but the held-out ones of the cold_items protocol; None
    keeps the plain draw, so the random stream, and every run without a protocol, is unchanged. Vectorised
    rejection sampling: redraw only the cells that hit their row, until none does (spec 3.4).
    """
    def draw(size):
        return rng.integers(1, item_num, size=size) if pool is None else pool[rng.integers(0, len(pool), size=size)]

    neg = draw((len(avoid), avoid.shape[1] if per_row is None else per_row))
    bad = (neg[:, :, None] == avoid[:, None, :]).any(-1)
    while bad.any():
        rows, cols = np.nonzero(bad)
        neg[rows, cols] = draw(len(rows))
        bad[rows, cols] = (neg[rows, cols][:, None] == avoid[rows]).any(-1)
    return neg


@register_train_dataset("SEQ")
class NextItemBatches(EpochBatches):
    """Batch of chunks: {'items': [B, M+1], 'negatives': [B, M+1]}; negatives[:, t] is the negative for items[:, t].

    Only positions whose item and predecessor are both real carry a target (spec 3.5, SEQTrainDataset);
    elsewhere the negative is 0.
    """

    def __init__(self, split: Split, config, rank: int = 0, world_size: int = 1):
        self.chunks = sequence_chunks(split, config["MAX_ITEM_LIST_LENGTH"])
        self.item_num, self.pool = split.item_num, split.negative_pool()
        super().__init__(len(self.chunks), config["train_batch_size"], config["seed"], rank, world_size)

    def make_batch(self, indices, rng):
        items = self.chunks[indices]
        neg = sample_negatives(rng, items, self.item_num, pool=self.pool)
        has_target = np.zeros_like(items, dtype=bool)
        has_target[:, 1:] = (items[:, 1:] != 0) & (items[:, :-1] != 0)
        neg[~has_target] = 0
        return {"items": torch.from_numpy(items), "negatives": torch.from_numpy(neg)}
