"""NEXT_ITEM batches: every position of a chunk predicts its next item (SASRec, GRU4Rec, NextItNet, FSASRec and
their PixelNet forms). The original's SEQ input type, built by its SEQTrainDataset (MOSEQTrainDataset for
PixelNet)."""
from __future__ import annotations

import numpy as np
import torch

from ..node_shared import shared_on_node
from ..split import Split, sequence_chunks
from .base import EpochBatches, check_negatives_exist, register_train_dataset, sample_negatives
from ...utils.batch_keys import ITEMS, NEGATIVES, TARGET_MASK


@register_train_dataset("NEXT_ITEM")
class NextItemBatches(EpochBatches):
    """Batch of chunks: {'items': [B, M+1], 'negatives': [B, M+1], 'target_mask': bool [B, M+1]}; negatives[:, t]
    is the negative for items[:, t], and target_mask[:, t] says whether items[:, t] is a target at all.

    Only positions whose item and predecessor are both real carry a target (as the original's SEQTrainDataset).
    The mask is sent rather than read off the negatives, so no model has to know that an id stands for "none";
    elsewhere the negative is 0 all the same, a padding id with a (zero) cover in PixelNet batches.
    """

    item_keys = (ITEMS, NEGATIVES)

    def __init__(self, split: Split, config, rank: int = 0, world_size: int = 1):
        self.chunks = shared_on_node(  # one copy per node for all ranks; int32 (int64 per batch)
            "chunks", config, lambda: sequence_chunks(split, config["MAX_ITEM_LIST_LENGTH"], np.int32))
        check_negatives_exist(split, self.chunks, config["MAX_ITEM_LIST_LENGTH"])
        self.item_num, self.pool = split.item_num, split.negative_pool()
        super().__init__(len(self.chunks), config["train_batch_size"], config["seed"], rank, world_size)

    def make_batch(self, indices, rng):
        items = self.chunks[indices].astype(np.int64)
        neg = sample_negatives(rng, items, self.item_num, pool=self.pool)
        has_target = np.zeros_like(items, dtype=bool)
        has_target[:, 1:] = (items[:, 1:] != 0) & (items[:, :-1] != 0)
        neg[~has_target] = 0
        return {ITEMS: torch.from_numpy(items), NEGATIVES: torch.from_numpy(neg),
                TARGET_MASK: torch.from_numpy(has_target)}
