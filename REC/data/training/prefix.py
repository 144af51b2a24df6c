"""PREFIX batches: every prefix of every training chunk predicts its last item (LightSANs, SRGNN and their
PixelNet forms). The original's AUGSEQ input type, built by its TwoTowerTrainDataset (LightSANs) and
GraphTrainDataset (SRGNN), MOTwoTowerTrainDataset and MOGraphTrainDataset for PixelNet.

A batch is {'items': [B, M] the prefix without its last item, left-padded, 'target': [B] that last item,
'negatives': [B] one item outside the prefix}. The original builds each prefix as a Python list; here an
example is only a (chunk row, end column) pair, fixed at construction, and a batch is two array lookups.
"""
from __future__ import annotations

import numpy as np
import torch

from ..split import Split, ragged_positions, sequence_chunks
from .base import EpochBatches, check_negatives_exist, register_train_dataset, sample_negatives
from ...utils.batch_keys import ITEMS, NEGATIVES, TARGET


@register_train_dataset("PREFIX")
class PrefixBatches(EpochBatches):
    """A chunk of n items gives n-1 examples, its prefixes of length 2..n; a chunk of one item gives none.

    Negatives avoid only the prefix, as the original. The batch size counts prefixes (the original's dataset
    items), so an epoch has about (mean chunk length - 1) times as many examples as a NEXT_ITEM epoch.
    """

    item_keys = (ITEMS, TARGET, NEGATIVES)

    def __init__(self, split: Split, config, rank: int = 0, world_size: int = 1):
        self.max_len = config["MAX_ITEM_LIST_LENGTH"]
        chunks = sequence_chunks(split, self.max_len)
        check_negatives_exist(split, chunks, self.max_len)  # a whole chunk is the avoid row of its longest prefix
        # M zero columns in front: the M items before any end column are then always a plain slice
        self.padded = np.concatenate([np.zeros((len(chunks), self.max_len), np.int64), chunks], 1)
        width = chunks.shape[1]
        n_targets = np.maximum((chunks != 0).sum(1) - 1, 0)  # a chunk is left-padded: its items are a suffix
        self.rows = np.repeat(np.arange(len(chunks), dtype=np.int64), n_targets)
        self.ends = ragged_positions(width - n_targets, n_targets)  # column of each prefix's last item
        self.item_num, self.pool = split.item_num, split.negative_pool()
        super().__init__(len(self.rows), config["train_batch_size"], config["seed"], rank, world_size)

    def make_batch(self, indices, rng):
        rows, ends = self.rows[indices], self.ends[indices] + self.max_len  # columns of self.padded
        prefix = self.padded[rows[:, None], ends[:, None] + np.arange(-self.max_len, 1)]  # [B, M+1]
        neg = sample_negatives(rng, prefix, self.item_num, per_row=1, pool=self.pool)[:, 0]
        return {ITEMS: torch.from_numpy(np.ascontiguousarray(prefix[:, :-1])),
                TARGET: torch.from_numpy(np.ascontiguousarray(prefix[:, -1])),
                NEGATIVES: torch.from_numpy(neg)}
