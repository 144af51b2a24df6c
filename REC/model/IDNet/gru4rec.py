"""GRU4Rec (Hidasi et al., ICLR 2016) with item-ID embeddings and PixelRec's next-item BPR loss.

Deliberate fix: the original feeds the left padding through the GRU, so the state that reaches the
first real item depends on how much padding precedes it (and on the random pad embedding). Here pad inputs
are zeroed, and the GRU has no biases (as the original): with a zero input and a zero state every gate
pre-activation is exactly 0, the candidate is ``tanh(0) = 0`` and the new state ``0.5*0 + 0.5*0 = 0``. The
state therefore stays exactly zero through any left padding and the first real item sees the same initial
state as an unpadded sequence. This keeps one dense GRU call over the batch (cuDNN on GPU), which packing
the variable lengths would give up, at no cost in exactness.
"""
from __future__ import annotations

import torch
from torch import nn

from ..base import DatasetInfo
from ..layers import Dropout
from ..registry import register_model
from ..sequential import NextItemModel


@register_model("IDNet")
class GRU4Rec(NextItemModel):

    def __init__(self, config, info: DatasetInfo):
        super().__init__(config, info)
        d, width = config["embedding_size"], config["hidden_size"] * config["embedding_size"]
        self.item_embedding = self.item_table(info.item_num, d, padding_idx=0)
        self.input_dropout = Dropout(config["dropout_prob"])
        # bias=False is what keeps padding inert (module docstring); do not add biases here.
        self.gru = nn.GRU(d, width, num_layers=config["num_layers"], bias=False, batch_first=True)
        self.project = nn.Linear(width, d)  # PyTorch default init, as the original
        nn.init.xavier_normal_(self.item_embedding.weight)
        nn.init.xavier_uniform_(self.gru.weight_ih_l0)  # only layer 0, as the original
        nn.init.xavier_uniform_(self.gru.weight_hh_l0)

    def encode(self, item_seq: torch.Tensor, item_emb: torch.Tensor | None = None,
               last_only: bool = False) -> torch.Tensor:
        """[B, L] left-padded ids -> [B, L, d]; outputs at pad positions are meaningless and never used."""
        if item_emb is None:
            item_emb = self.item_embedding(item_seq)
        x = self.input_dropout(item_emb * (item_seq != 0).unsqueeze(-1).to(item_emb.dtype))
        out, _ = self.gru(x)
        return self.project(out)
