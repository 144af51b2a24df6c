"""MASKED batches: cloze (masked-item) training for BERT4Rec and MOBERT4Rec, built whole per batch. The
original's BERT4Rec declares SEQ and gets, by model name, its BERT4RecTrainDataset
(MOBERT4RecTrainDataset for PixelNet)."""
from __future__ import annotations

import numpy as np
import torch

from ...config import ConfigError
from ..node_shared import shared_on_node
from ..split import Split, sequence_chunks
from .base import EpochBatches, check_negatives_exist, register_train_dataset, sample_negatives
from ...utils.batch_keys import ITEMS, MASKED_ITEMS, NEGATIVES, TARGET_MASK


@register_train_dataset("MASKED")
class MaskedBatches(EpochBatches):
    """Batch of chunks: {'masked_items', 'items', 'negatives', 'target_mask'}, each [B, M+1] and left-padded.

    Every real item is masked independently with probability ``mask_ratio`` (the last one too; no position is
    forced, as the original). A masked position holds the mask token id ``item_num`` (the model's extra
    embedding row) in ``masked_items`` and a negative that avoids the chunk's items in ``negatives``; every
    other position has negative 0. ``target_mask`` (bool) is True exactly at the masked positions, the ones
    that carry a target, so models need not infer it from the ids. A chunk may come out with no masked position
    and then adds no loss.
    """

    item_keys = (MASKED_ITEMS, ITEMS, NEGATIVES)  # the mask token (item_num) is no real item: it has no cover

    def __init__(self, split: Split, config, rank: int = 0, world_size: int = 1):
        self.chunks = shared_on_node(  # one copy per node for all ranks; int32 (int64 per batch)
            "chunks", config, lambda: sequence_chunks(split, config["MAX_ITEM_LIST_LENGTH"], np.int32))
        check_negatives_exist(split, self.chunks, config["MAX_ITEM_LIST_LENGTH"])
        self.item_num, self.pool = split.item_num, split.negative_pool()
        self.mask_token = split.item_num
        self.mask_ratio = config["mask_ratio"]
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise ConfigError(f"mask_ratio must be in [0, 1], got {self.mask_ratio}")
        super().__init__(len(self.chunks), config["train_batch_size"], config["seed"], rank, world_size)

    def make_batch(self, indices, rng):
        items = self.chunks[indices].astype(np.int64)
        masked = (items != 0) & (rng.random(items.shape) < self.mask_ratio)
        neg = sample_negatives(rng, items, self.item_num, pool=self.pool)
        neg[~masked] = 0
        return {MASKED_ITEMS: torch.from_numpy(np.where(masked, self.mask_token, items)),
                ITEMS: torch.from_numpy(items), NEGATIVES: torch.from_numpy(neg),
                TARGET_MASK: torch.from_numpy(masked)}
