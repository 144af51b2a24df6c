"""FM (Rendle, ICDM 2010) over the item-ID fields of a history, as PixelRec's IDNet FM.

The fields of an example are its history items plus one candidate. The FM pairwise term of (history, pos)
minus that of (history, neg) leaves only ``<sum of history, pos - neg>``: the history-history pairs cancel.
So training and ranking both score ``<sum of non-pad history embeddings, candidate>``, which is what the
original's ``predict`` computes too, without the second-order sum over all pairs.

Fix: every example of a batch is trained (the original used the first one only).
"""
from __future__ import annotations

import torch
from torch import nn

from ..base import DatasetInfo
from ..registry import register_model
from ..target_bpr import TargetBPRModel
from ...utils.batch_keys import ITEMS, ITEM_SEQ


class HistoryTower(TargetBPRModel):
    """Shared by FM and DSSM: an xavier-normal item table (every row, as the original) and one BPR pair per
    held-out item; subclasses turn the history embeddings into the user vector."""

    input_type = "HELD_OUT_ITEM"

    def __init__(self, config, info: DatasetInfo):
        super().__init__(config, info)
        self.item_embedding = self.item_table(info.item_num, config["embedding_size"], padding_idx=0)
        nn.init.xavier_normal_(self.item_embedding.weight)

    def user_vector(self, hist_emb: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """[B, M, d] history embeddings and [B, M] real-item mask -> [B, d]."""
        raise NotImplementedError

    def batch_user(self, batch, context_emb, derived):
        return self.user_vector(context_emb, batch[ITEMS] != 0)

    def item_representations(self):
        return self.item_embedding.weight

    def user_representations(self, batch):
        item_seq = batch[ITEM_SEQ]
        return self.user_vector(self.item_embedding(item_seq), item_seq != 0)


@register_model("IDNet")
class FM(HistoryTower):
    def user_vector(self, hist_emb, real):
        # the pad row is a random vector after the xavier init: mask it, as the original does
        return (hist_emb * real[:, :, None]).sum(1)
