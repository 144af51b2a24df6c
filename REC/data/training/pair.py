"""PAIR batches {'user_id', 'items', 'negatives'}, each [B]: one BPR pair per training event (MF, LightGCN,
VBPR and, with covers, MOMF and DVBPR). The original's PAIR input type, built by its PairTrainDataset
(MOPairTrainDataset for PixelNet)."""
from __future__ import annotations

import numpy as np
import torch

from ..interactions import DataError
from ..split import Split
from .base import EpochBatches, draw_items, register_train_dataset
from ...utils.batch_keys import ITEMS, NEGATIVES, USER_ID


@register_train_dataset("PAIR")
class PairBatches(EpochBatches):
    """Every training interaction once per epoch (the original's PairTrainDataset), each with one negative that avoids
    the user's whole training history, not only a chunk as the sequence datasets do, drawn from
    ``split.negative_pool()`` (every item but the held-out ones under the cold_items protocol).

    Examples are positions in ``split.train_items``; a batch finds each example's user row by a search in the
    CSR offsets, so nothing per interaction is stored beyond one sorted array of (row, item) keys, which answers
    "is this item in that row's history?" for a whole batch with one ``searchsorted``.
    """

    item_keys = (ITEMS, NEGATIVES)

    def __init__(self, split: Split, config, rank: int = 0, world_size: int = 1):
        self.indptr, self.items, self.users = split.train_indptr, split.train_items, split.train_users
        self.item_num, self.pool = split.item_num, split.negative_pool()
        rows = np.repeat(np.arange(len(self.users), dtype=np.int64), np.diff(self.indptr))
        self.history = np.unique(rows * self.item_num + self.items)
        distinct = np.bincount(self.history // self.item_num, minlength=len(self.users))
        full = np.flatnonzero(distinct >= (self.item_num - 1 if self.pool is None else len(self.pool)))
        if len(full):  # rejection sampling would never end (the original hangs here)
            raise DataError(f"{len(full)} users have interacted with every item that may be a negative (e.g. "
                             f"internal user id {self.users[full[0]]}), so no negative exists for them")
        super().__init__(len(self.items), config["train_batch_size"], config["seed"], rank, world_size)

    def in_history(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = rows * self.item_num + items
        pos = np.minimum(np.searchsorted(self.history, keys), len(self.history) - 1)
        return self.history[pos] == keys

    def make_batch(self, indices, rng):
        rows = np.searchsorted(self.indptr, indices, side="right") - 1
        neg = draw_items(rng, self.item_num, self.pool, len(indices))
        bad = np.flatnonzero(self.in_history(rows, neg))
        while len(bad):  # redraw only the rejected cells
            neg[bad] = draw_items(rng, self.item_num, self.pool, len(bad))
            bad = bad[self.in_history(rows[bad], neg[bad])]
        return {USER_ID: torch.from_numpy(self.users[rows]), ITEMS: torch.from_numpy(self.items[indices]),
                NEGATIVES: torch.from_numpy(neg)}
