"""HELD_OUT_ITEM batches: each item of a chunk is predicted from the rest of its chunk (FM, DSSM, ACF, and
MOFM, MODSSM with covers). Called LEAVE_ONE_OUT_CHUNK here before; the original's FM and DSSM declare SEQ and
get these datasets by model name.

This is the example set of the original's SampleOneTowerTrainDataset (FM), SampleTwoTowerTrainDataset (DSSM)
and SampleACFTrainDataset (ACF), with MOSampleOneTower / MOSampleTwoTower for PixelNet: for position
idx of a chunk, the history is the chunk without idx (in order, so later items count too) and the positive is
chunk[idx]. A batch is {'items': [B, M] that history, left-padded, 'target': [B], 'negatives': [B] one item
outside the chunk, 'user_id': [B] the chunk's user (ACF's input, as the original's SampleACFTrainDataset)}.

Fix: the original's FM and DSSM trained on the first example of each collated batch only; here
every example of a batch is a row of the loss, and the batch size counts examples, not chunks.
"""
from __future__ import annotations

import numpy as np
import torch

from ..split import Split, ragged_positions, sequence_chunk_users, sequence_chunks
from .base import EpochBatches, check_negatives_exist, register_train_dataset, sample_negatives
from ...utils.batch_keys import ITEMS, NEGATIVES, TARGET, USER_ID


@register_train_dataset("HELD_OUT_ITEM")
class HeldOutItemBatches(EpochBatches):
    """One example per (chunk, real position), stored as (chunk row, column) and expanded per batch.

    A chunk of one item gives no example (the original emits one with an empty history): it would train a
    user state that evaluation never shows, since every evaluated user has at least one history item.
    """

    item_keys = (ITEMS, TARGET, NEGATIVES)

    def __init__(self, split: Split, config, rank: int = 0, world_size: int = 1):
        self.chunks = sequence_chunks(split, config["MAX_ITEM_LIST_LENGTH"])
        check_negatives_exist(split, self.chunks, config["MAX_ITEM_LIST_LENGTH"])
        self.chunk_users = sequence_chunk_users(split, config["MAX_ITEM_LIST_LENGTH"])
        lengths = (self.chunks != 0).sum(1)
        lengths[lengths < 2] = 0
        self.rows = np.repeat(np.arange(len(self.chunks), dtype=np.int64), lengths)
        self.cols = ragged_positions(self.chunks.shape[1] - lengths, lengths)
        self.item_num, self.pool = split.item_num, split.negative_pool()
        super().__init__(len(self.rows), config["train_batch_size"], config["seed"], rank, world_size)

    def make_batch(self, indices, rng):
        rows, cols = self.rows[indices], self.cols[indices]
        chunk = self.chunks[rows]  # [B, M+1], left-padded
        # dropping one real column keeps the result left-padded and in order: column j reads j, or j+1 past idx
        keep = np.arange(chunk.shape[1] - 1)[None, :]
        others = np.take_along_axis(chunk, keep + (keep >= cols[:, None]), 1)
        neg = sample_negatives(rng, chunk, self.item_num, per_row=1, pool=self.pool)[:, 0]
        return {ITEMS: torch.from_numpy(others), TARGET: torch.from_numpy(chunk[np.arange(len(rows)), cols]),
                NEGATIVES: torch.from_numpy(neg), USER_ID: torch.from_numpy(self.chunk_users[rows])}
