"""VBPR (He & McAuley, AAAI 2016) as PixelRec trains it.

score(u, i) = gamma_u . gamma_i + theta_u . (E f_i) + beta' . f_i, with frozen visual features f_i, ID tables
gamma_u, gamma_i, theta_u of width d' = embedding_size / 2, the projection E: D -> d' and the visual bias
beta': D -> 1 (no item or global bias terms, as the original). BPR loss over one sampled negative per training
interaction. E and beta' are the modules ``projection`` and ``bias_projection``: with
``encoder_modules: [projection, bias_projection]`` they form the optimizer's "modal" group (the original's decay_check_name).
"""
from __future__ import annotations

import torch
from torch import nn

from ..base import DatasetInfo, RecModel, TargetRows, bpr_loss, config_error
from ..registry import register_model
from .feature_table import feature_table_from_config
from ...utils.batch_keys import ITEMS, NEGATIVES, USER_ID


@register_model("ViNet")
class VBPR(RecModel):
    input_type = "PAIR"
    needs_user_id = True

    def __init__(self, config, info: DatasetInfo):
        super().__init__(config, info)
        d = config["embedding_size"]
        if d % 2:
            raise config_error(config, "embedding_size", "an even number: VBPR splits it between the ID and the "
                                                         "visual factors")
        half = d // 2
        self.features = feature_table_from_config(config, info)
        self.user_embedding = nn.Embedding(info.user_num, half)         # gamma_u
        self.item_embedding = nn.Embedding(info.item_num, half)         # gamma_i
        self.user_visual_embedding = nn.Embedding(info.user_num, half)  # theta_u
        self.projection = nn.Linear(self.features.width, half, bias=False)  # E
        self.bias_projection = nn.Linear(self.features.width, 1, bias=False)  # beta'
        for m in (self.user_embedding, self.item_embedding, self.user_visual_embedding, self.projection,
                  self.bias_projection):
            nn.init.xavier_normal_(m.weight)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """[..., d + 1]: gamma_i, E f_i and the visual bias beta' f_i, to be dotted with ``user_vectors``."""
        f = self.features(items)
        return torch.cat([self.item_embedding(items), self.projection(f), self.bias_projection(f)], -1)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """[..., d + 1]: gamma_u, theta_u and a constant 1 that picks up the item's visual bias."""
        gamma, theta = self.user_embedding(users), self.user_visual_embedding(users)
        return torch.cat([gamma, theta, torch.ones_like(gamma[..., :1])], -1)

    def paper_loss(self, batch):
        user = self.user_vectors(batch[USER_ID])
        items = self.item_vectors(torch.stack([batch[ITEMS], batch[NEGATIVES]]))  # [2, B, d + 1]
        pos, neg = (items * user).sum(-1)
        return bpr_loss(pos, neg).mean()

    def target_rows(self, batch):
        """One row per training interaction: the user's [gamma, theta, 1] and the item."""
        return TargetRows(self.user_vectors(batch[USER_ID]), batch[ITEMS], self.item_vectors,
                          self.item_representations)

    def item_representations(self):
        f = self.features.table  # whole table: no gathered copy
        return torch.cat([self.item_embedding.weight, self.projection(f), self.bias_projection(f)], -1)

    def user_representations(self, batch):
        return self.user_vectors(batch[USER_ID])
