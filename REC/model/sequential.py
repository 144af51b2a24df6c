"""Shared training and scoring of next-item models over an item-ID table (SASRec, GRU4Rec, NextItNet)."""
from __future__ import annotations

import torch

from .base import RecModel, TargetRows, bpr_loss
from ..utils.batch_keys import ITEMS, ITEM_SEQ, NEGATIVES, TARGET_MASK


class NextItemModel(RecModel):
    """Every position of a chunk predicts the next item against one sampled negative: the BPR loss is
    summed over positions and averaged over sequences, as the original. Subclasses own ``item_embedding`` and
    ``encode(item_seq, item_emb=None, last_only=False) -> [B, L, d]`` (``last_only`` may return [B, 1, d])."""

    input_type = "NEXT_ITEM"

    def encode(self, item_seq: torch.Tensor, item_emb: torch.Tensor | None = None,
               last_only: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def paper_loss(self, batch):
        items, negatives = batch[ITEMS], batch[NEGATIVES]
        # One lookup for inputs, positives and negatives: each lookup's backward materialises a dense
        # [item_num, d] gradient, so three lookups cost three table-sized fills per step.
        emb = self.item_embedding(torch.stack([items, negatives], 1))  # [B, 2, M+1, d]
        hidden = self.encode(items[:, :-1], emb[:, 0, :-1])
        pos = (hidden * emb[:, 0, 1:]).sum(-1)
        neg = (hidden * emb[:, 1, 1:]).sum(-1)
        has_target = batch[TARGET_MASK][:, 1:].float()  # the batch says which positions are targets
        return (bpr_loss(pos, neg) * has_target).sum(-1).mean()

    def target_rows(self, batch):
        """Every position of a chunk that has a next item: its hidden state and that item."""
        items = batch[ITEMS]
        hidden = self.encode(items[:, :-1])
        has_target = batch[TARGET_MASK][:, 1:]
        return TargetRows(hidden[has_target], items[:, 1:][has_target], self.item_embedding,
                          self.item_representations)

    def item_representations(self):
        return self.item_embedding.weight

    def user_representations(self, batch):
        return self.encode(batch[ITEM_SEQ], last_only=True)[:, -1]
