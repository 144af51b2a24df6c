"""Evaluation batches: this rank's contiguous share of the users, cut into batches of users."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .split import EvalSplit
from ..utils.batch_keys import HIST_ITEM, HIST_ROW, ITEM_SEQ, TARGET, USER_ID


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous, disjoint, covering user ranges; a rank may get none when there are fewer users than ranks."""
    return n * rank // world_size, n * (rank + 1) // world_size


class EvalBatches:
    """Yields {'user_id': [B], 'item_seq': [B, M], 'target': [B], 'hist_row': [H], 'hist_item': [H]}.

    ``item_seq`` is the model input (the last M history items, left-padded); ``hist_row``/``hist_item`` list
    every (row in batch, item) of the full history, for masking.

    ``item_keys`` lists the keys holding item ids, as the training datasets declare them; PixelNet needs no
    covers here, since evaluation encodes every item's cover once (``ItemCoverBatches``) and indexes that table.
    """

    item_keys = (ITEM_SEQ, TARGET, HIST_ITEM)

    def __init__(self, split: EvalSplit, max_len: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.split, self.batch_size, self.max_len = split, batch_size, max_len
        self.start, self.stop = shard_bounds(len(split), rank, world_size)

    @property
    def n_users(self) -> int:
        return self.stop - self.start

    def __len__(self) -> int:
        return -(-self.n_users // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        s = self.split
        for a in range(self.start, self.stop, self.batch_size):
            b = min(a + self.batch_size, self.stop)
            counts, history = s.histories(a, b)
            yield {
                # copies: under several processes the split is a read-only map, which torch must not alias
                USER_ID: torch.from_numpy(np.array(s.users[a:b])),
                ITEM_SEQ: torch.from_numpy(s.last_items(self.max_len, a, b)),  # per batch: no [users, M] table
                TARGET: torch.from_numpy(np.array(s.targets[a:b])),
                HIST_ROW: torch.from_numpy(np.repeat(np.arange(b - a), counts)),
                HIST_ITEM: torch.from_numpy(history),
            }
