"""ACF, Attentive Collaborative Filtering (Chen et al., SIGIR 2017), as PixelRec trains it.

The user is an ID embedding u plus an attention-weighted sum of the ID embeddings p of the profile (the other
items of a training chunk; at evaluation the last M history items). Two attention levels, both driven by u:
- component level: each profile item's frozen feature map is cut into R regions, x_r = ReLU(W_f f_r), and
  pooled as x_p = sum_r beta_r x_r with beta = softmax_r(w_c . ReLU(W_x x_r + W_u u));
- item level: alpha = softmax_p(w_i . ReLU(W_u' u + W_p p + W_x' x_p)) over the real profile items, and the
  user vector is W_u' u + sum_p alpha_p p (as the original: the projected, not the raw, user embedding).
Items are scored by their ID embedding (shared with the profile embeddings). BPR loss, one negative.
"""
from __future__ import annotations

import torch
from torch import nn

from ..base import DatasetInfo
from ..registry import register_model
from ..target_bpr import TargetBPRModel
from .feature_table import feature_table_from_config
from ...utils.batch_keys import ITEMS, ITEM_SEQ, USER_ID

CHUNK_ELEMENTS = 1 << 26  # feature values gathered at once when a large evaluation batch is encoded in pieces


@register_model("ViNet")
class ACF(TargetBPRModel):
    input_type = "HELD_OUT_ITEM"  # these batches carry user_id too
    needs_user_id = True

    def __init__(self, config, info: DatasetInfo):
        super().__init__(config, info)
        d = config["embedding_size"]
        self.features = feature_table_from_config(config, info, ndim=(3, 4), on_host=config["v_feat_on_host"])
        table = self.features.table
        self.features.table = table.reshape(len(table), -1, table.shape[-1])  # [N, H, W, D] -> [N, R, D], a view
        self.item_embedding = nn.Embedding(info.item_num, d, padding_idx=0)
        self.user_embedding = nn.Embedding(info.user_num, d)
        self.region_projection = nn.Linear(self.features.width, d)       # W_f
        self.component_region = nn.Linear(d, d)                          # W_x
        self.component_user = nn.Linear(d, d)                            # W_u
        self.component_score = nn.Linear(d, 1)                           # w_c
        self.item_user = nn.Linear(d, d)                                 # W_u'
        self.item_profile = nn.Linear(d, d)                              # W_p
        self.item_component = nn.Linear(d, d)                            # W_x'
        self.item_score = nn.Linear(d, 1)                                # w_i
        # the original: kaiming-normal (ReLU gain) on every table row, padding included, and every Linear
        for m in self.modules():
            if isinstance(m, (nn.Embedding, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def user_vector(self, users: torch.Tensor, profile: torch.Tensor, p: torch.Tensor | None = None) -> torch.Tensor:
        """[B] user ids and [B, M] profile item ids (0 = padding) -> [B, d]; ``p`` [B, M, d] is the profile's ID
        embeddings when training has looked them up already (with the target and the negative, in one call)."""
        u = self.user_embedding(users)                                   # [B, d]
        real = profile != 0                                              # [B, M]
        x = torch.relu(self.region_projection(self.features(profile)))   # [B, M, R, d]
        beta = self.component_score(torch.relu(self.component_region(x) + self.component_user(u)[:, None, None]))
        pooled = (torch.softmax(beta, dim=2) * x).sum(2) * real[..., None]  # [B, M, d], padding zeroed
        if p is None:
            p = self.item_embedding(profile)
        user = self.item_user(u)
        alpha = self.item_score(torch.relu(user[:, None] + self.item_profile(p) + self.item_component(pooled)))
        alpha = torch.softmax(alpha.squeeze(-1).masked_fill(~real, -torch.inf), dim=1)
        alpha = torch.nan_to_num(alpha, nan=0.0)  # a profile of padding only: no item term, as the original
        return user + (alpha[..., None] * p).sum(1)

    def batch_user(self, batch, context_emb, derived):
        return self.user_vector(batch[USER_ID], batch[ITEMS], context_emb)

    def item_representations(self):
        return self.item_embedding.weight

    def user_representations(self, batch):
        users, profile = batch[USER_ID], batch[ITEM_SEQ]
        regions, width = self.features.table.shape[1:]
        step = max(1, CHUNK_ELEMENTS // (profile.shape[1] * regions * width))
        return torch.cat([self.user_vector(users[a:a + step], profile[a:a + step])
                          for a in range(0, len(users), step)])
