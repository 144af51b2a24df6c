"""NextItNet (Yuan et al., WSDM 2019) with item-ID embeddings and PixelRec's next-item BPR loss.

Deliberate fix: the original convolves over the left padding like over items, so a prediction
depends on how much padding precedes the sequence and on the (random, decaying) pad embedding. Here the
activations at pad positions are held at exactly zero: the input embeddings are multiplied by the non-pad
mask, and so is the output of every convolution stage (the convolution bias followed by LayerNorm and ReLU
would otherwise make them non-zero again, and the next dilated convolution would read them). A causal
convolution pads on the left with zeros anyway, so zeros at pad positions are indistinguishable from that
padding: every real position computes what it would on the unpadded sequence, whatever the padding length.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..base import DatasetInfo
from ..registry import register_model
from ..sequential import NextItemModel


class CausalConv(nn.Module):
    """Dilated causal convolution over [B, L, d] followed by LayerNorm(eps 1e-8) and ReLU.

    A 1-D convolution with kernel k is the original's Conv2d with kernel (1, k) over a height-1 image; the
    PyTorch default initialisation draws from the same range (fan-in d*k in both)."""

    def __init__(self, d: int, kernel: int, dilation: int):
        super().__init__()
        self.left = (kernel - 1) * dilation
        self.conv = nn.Conv1d(d, d, kernel, dilation=dilation)
        self.norm = nn.LayerNorm(d, eps=1e-8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.pad(x.transpose(1, 2), (self.left, 0))).transpose(1, 2)
        return F.relu(self.norm(y))


class ResidualBlock(nn.Module):
    """The original's block type "b": two causal convolutions, dilations δ then 2δ, plus the input."""

    def __init__(self, d: int, kernel: int, dilation: int):
        super().__init__()
        self.first, self.second = CausalConv(d, kernel, dilation), CausalConv(d, kernel, 2 * dilation)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``keep``: [B, L, 1] 1 at real items, 0 at padding (see the module docstring)."""
        h = self.first(x) * keep
        return self.second(h) * keep + x


@register_model("IDNet")
class NextItNet(NextItemModel):

    def __init__(self, config, info: DatasetInfo):
        super().__init__(config, info)
        d, kernel = config["embedding_size"], config["kernel_size"]
        self.item_embedding = self.item_table(info.item_num, d, padding_idx=0)
        bound = math.sqrt(1.0 / info.item_num)
        nn.init.uniform_(self.item_embedding.weight, -bound, bound)
        self.blocks = nn.ModuleList(ResidualBlock(d, kernel, dilation)
                                    for dilation in list(config["dilations"]) * config["block_num"])
        self.final = None
        if config["final_layer"]:
            self.final = nn.Linear(d, d)
            nn.init.xavier_normal_(self.final.weight)
            nn.init.constant_(self.final.bias, 0.1)

    def encode(self, item_seq: torch.Tensor, item_emb: torch.Tensor | None = None,
               last_only: bool = False) -> torch.Tensor:
        """[B, L] left-padded ids -> [B, L, d]; outputs at pad positions are zero (or the final bias) and unused."""
        if item_emb is None:
            item_emb = self.item_embedding(item_seq)
        keep = (item_seq != 0).unsqueeze(-1).to(item_emb.dtype)
        x = item_emb * keep
        for block in self.blocks:
            x = block(x, keep)
        return self.final(x) if self.final is not None else x
