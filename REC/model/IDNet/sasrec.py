"""SASRec (Kang & McAuley, ICDM 2018) with item-ID embeddings, as PixelRec trains it.

Next-item BPR: every position of a chunk predicts the next item against one sampled negative; the loss is
summed over positions and averaged over sequences, as the original.
"""
from __future__ import annotations

import torch
from torch import nn

from ..base import DatasetInfo
from ..layers import Dropout, TransformerEncoder, causal_padding_mask, init_normal_
from ..registry import register_model
from ..sequential import NextItemModel


@register_model("IDNet")
class SASRec(NextItemModel):

    def __init__(self, config, info: DatasetInfo):
        super().__init__(config, info)
        d, self.max_len = config["embedding_size"], config["MAX_ITEM_LIST_LENGTH"]
        self.item_embedding = self.item_table(info.item_num, d, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_len, d)
        self.input_norm = nn.LayerNorm(d, eps=config["layer_norm_eps"])
        self.input_dropout = Dropout(config["hidden_dropout_prob"])
        self.encoder = TransformerEncoder.from_config(config)
        std = config["initializer_range"]
        self.apply(lambda m: init_normal_(m, std))

    def encode(self, item_seq: torch.Tensor, item_emb: torch.Tensor | None = None,
               last_only: bool = False) -> torch.Tensor:
        """[B, L] left-padded ids -> [B, L, d] ([B, 1, d] with ``last_only``); position ids are absolute window
        slots, as in the original. ``item_emb`` passes embeddings already looked up for ``item_seq``."""
        if item_emb is None:
            item_emb = self.item_embedding(item_seq)
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        x = self.input_dropout(self.input_norm(item_emb + self.position_embedding(positions)))
        return self.encoder(x, causal_padding_mask(item_seq), last_only)
