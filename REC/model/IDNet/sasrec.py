"""SASRec (Kang & McAuley, ICDM 2018) with item-ID embeddings, as PixelRec trains it (spec 6.1).

Next-item BPR: every position of a chunk predicts the next item against one sampled negative; the loss is
summed over positions and averaged over sequences, as the original.
"""
from __future__ import annotations

import torch
from torch import nn

from ..base import DatasetInfo, RecModel, bpr_loss
from ..layers import TransformerEncoder, causal_padding_mask, init_normal_
from ..registry import register_model


@register_model("IDNet")
class SASRec(RecModel):
    input_type = "SEQ"

    def __init__(self, config, info: DatasetInfo):
        super().__init__(config, info)
        d, self.max_len = config["embedding_size"], config["MAX_ITEM_LIST_LENGTH"]
        self.item_embedding = nn.Embedding(info.item_num, d, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_len, d)
        self.input_norm = nn.LayerNorm(d, eps=config["layer_norm_eps"])
        self.input_dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.encoder = TransformerEncoder(
            n_layers=config["n_layers"], d=d, n_heads=config["n_heads"], inner=config["inner_size"] * d,
            hidden_dropout=config["hidden_dropout_prob"], attn_dropout=config["attn_dropout_prob"],
            act=config["hidden_act"], eps=config["layer_norm_eps"])
        std = config["initializer_range"]
        self.apply(lambda m: init_normal_(m, std))

    def encode(self, item_seq: torch.Tensor) -> torch.Tensor:
        """[B, L] left-padded ids -> [B, L, d]; position ids are absolute window slots (spec 9.11)."""
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        x = self.item_embedding(item_seq) + self.position_embedding(positions)
        x = self.input_dropout(self.input_norm(x))
        return self.encoder(x, causal_padding_mask(item_seq))

    def forward(self, batch):
        items, negatives = batch["items"], batch["negatives"]
        hidden = self.encode(items[:, :-1])
        pos = (hidden * self.item_embedding(items[:, 1:])).sum(-1)
        neg = (hidden * self.item_embedding(negatives[:, 1:])).sum(-1)
        has_target = (negatives[:, 1:] != 0).float()
        return (bpr_loss(pos, neg) * has_target).sum(-1).mean()

    def item_representations(self):
        return self.item_embedding.weight

    def user_representations(self, batch):
        return self.encode(batch["item_seq"])[:, -1]
