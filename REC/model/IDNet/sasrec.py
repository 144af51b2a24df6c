"""SASRec (Kang & McAuley, ICDM 2018) with item-ID embeddings, as PixelRec trains it (spec 6.1).

Next-item BPR: every position of a chunk predicts the next item against one sampled negative; the loss is
summed over positions and averaged over sequences, as the original.
"""
from __future__ import annotations

import torch
from torch import nn

from ..base import DatasetInfo, RecModel, bpr_loss
from ..layers import Dropout, TransformerEncoder, causal_padding_mask, init_normal_
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
        self.input_dropout = Dropout(config["hidden_dropout_prob"])
        self.encoder = TransformerEncoder(
            n_layers=config["n_layers"], d=d, n_heads=config["n_heads"], inner=config["inner_size"] * d,
            hidden_dropout=config["hidden_dropout_prob"], attn_dropout=config["attn_dropout_prob"],
            act=config["hidden_act"], eps=config["layer_norm_eps"])
        std = config["initializer_range"]
        self.apply(lambda m: init_normal_(m, std))

    def encode(self, item_seq: torch.Tensor, item_emb: torch.Tensor | None = None,
               last_only: bool = False) -> torch.Tensor:
        """[B, L] left-padded ids -> [B, L, d] ([B, 1, d] with ``last_only``); position ids are absolute window
        slots (spec 9.11). ``item_emb`` passes embeddings already looked up for ``item_seq``."""
        if item_emb is None:
            item_emb = self.item_embedding(item_seq)
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        x = self.input_dropout(self.input_norm(item_emb + self.position_embedding(positions)))
        return self.encoder(x, causal_padding_mask(item_seq), last_only)

    def forward(self, batch):
        items, negatives = batch["items"], batch["negatives"]
        # One lookup for inputs, positives and negatives: each lookup's backward materialises a dense
        # [item_num, d] gradient, so three lookups cost three table-sized fills per step.
        emb = self.item_embedding(torch.stack([items, negatives], 1))  # [B, 2, M+1, d]
        hidden = self.encode(items[:, :-1], emb[:, 0, :-1])
        pos = (hidden * emb[:, 0, 1:]).sum(-1)
        neg = (hidden * emb[:, 1, 1:]).sum(-1)
        has_target = (negatives[:, 1:] != 0).float()
        return (bpr_loss(pos, neg) * has_target).sum(-1).mean()

    def item_representations(self):
        return self.item_embedding.weight

    def user_representations(self, batch):
        return self.encode(batch["item_seq"], last_only=True)[:, -1]
