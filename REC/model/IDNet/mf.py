"""MF (BPR matrix factorisation) as PixelRec trains it: a user table and an item table, optionally
each followed by an MLP tower, scored by dot product against one sampled negative per training interaction."""
from __future__ import annotations

import torch
from torch import nn

from ..base import DatasetInfo, RecModel, TargetRows, bpr_loss
from ..layers import mlp_layers
from ..registry import register_model
from ...utils.batch_keys import ITEMS, NEGATIVES, USER_ID


@register_model("IDNet")
class MF(RecModel):
    input_type = "PAIR"
    needs_user_id = True

    def __init__(self, config, info: DatasetInfo):
        super().__init__(config, info)
        d, hidden = config["embedding_size"], list(config["mlp_hidden_size"])
        self.user_embedding = self.user_table(info.user_num, d)
        self.item_embedding = self.item_table(info.item_num, d)
        self.user_tower = mlp_layers([d, *hidden], config["dropout_prob"])
        self.item_tower = mlp_layers([d, *hidden], config["dropout_prob"])
        for m in self.modules():
            if isinstance(m, (nn.Embedding, nn.Linear)):
                nn.init.xavier_normal_(m.weight)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def paper_loss(self, batch):
        users = self.user_tower(self.user_embedding(batch[USER_ID]))
        # Positives and negatives go through the item tower as one [2B, d] batch (one embedding lookup, one set
        # of BatchNorm statistics); that layout is this package's own choice.
        items = self.item_tower(self.item_embedding(torch.cat([batch[ITEMS], batch[NEGATIVES]])))
        pos, neg = (items.view(2, *users.shape) * users).sum(-1)
        # The original's -mean(1e-8 + log sigmoid) differs by the constant 1e-8 only.
        return bpr_loss(pos, neg).mean()

    def target_rows(self, batch):
        """One row per training interaction: the user's vector and the item."""
        users = self.user_tower(self.user_embedding(batch[USER_ID]))
        return TargetRows(users, batch[ITEMS], lambda ids: self.item_tower(self.item_embedding(ids)),
                          self.item_representations)

    def item_representations(self):
        return self.item_tower(self.item_embedding.weight)

    def user_representations(self, batch):
        return self.user_tower(self.user_embedding(batch[USER_ID]))
