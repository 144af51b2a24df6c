"""DVBPR (Kang et al., ICDM 2017): BPR with an item vector learned from its image by a CNN-F, end to end.

score(u, i) = γ_u·γ_i + θ_u·CNNF(cover_i): ID factors plus visual factors, each half of ``embedding_size``.
The original ships this model but cannot run it (its dataset yields two values, its forward unpacks
three); this one runs. The score is the dot product of [γ_u; θ_u] with [γ_i; CNNF(cover_i)], so DVBPR
is MF (REC.model.IDNet.mf) whose item table is that concatenation, and full ranking is one matrix product.

Deliberate differences: the CNN-F flattens an adaptive average pool of the last feature map to the 22x2 grid
its first fully connected layer expects (at the original's 224 px this pool is the identity), so other cover
sizes work too; the tables start xavier-normal like MF's instead of U(0, 1), whose dot products of ~d/8 saturate
the sigmoid from the first step.
"""
from __future__ import annotations

import torch
from torch import nn

from ..IDNet.mf import MF
from ..base import config_error
from ..layers import Dropout
from ..pixel import CoverItems, PixelItems
from ..registry import register_model


class CNNF(nn.Module):
    """The CNN-F of the DVBPR paper: 5 convolutions and 3 fully connected layers, xavier-uniform."""

    is_convolutional = True
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # trained from scratch: no pretraining statistics

    def __init__(self, out_dim: int, dropout: float, input_size: int = 224):
        super().__init__()
        self.input_size = input_size
        relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=(1, 4)), relu(), nn.MaxPool2d(2),
            nn.Conv2d(64, 256, 5), relu(), nn.MaxPool2d(2),
            nn.Conv2d(256, 256, 3), relu(), nn.Conv2d(256, 256, 3), relu(), nn.Conv2d(256, 256, 3), relu(),
            nn.MaxPool2d(2), nn.AdaptiveAvgPool2d((22, 2)), nn.Flatten())
        self.head = nn.Sequential(
            nn.Linear(256 * 22 * 2, 512), relu(), Dropout(dropout),
            nn.Linear(512, 512), relu(), Dropout(dropout),
            nn.Linear(512, out_dim), relu(), Dropout(dropout))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class IdAndCoverItems(nn.Module):
    """Item vectors [γ_i; CNNF(cover_i)]: an ID table beside ``CoverItems``, with CoverItems' interface."""

    def __init__(self, item_num: int, half: int, covers: CoverItems):
        super().__init__()
        self.ids, self.covers = nn.Embedding(item_num, half), covers
        nn.init.xavier_normal_(self.ids.weight)
        self.embedding_dim = covers.embedding_dim  # the width the evaluator encodes covers to

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.ids(ids), self.covers(ids)], -1)

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.ids.weight, self.covers.weight], -1)

    def batch_source(self, cover_ids, inputs):
        return self.covers.batch_source(cover_ids, inputs)

    def encode(self, covers):
        return self.covers.encode(covers)

    def encode_items(self, inputs):
        return self.covers.encode_items(inputs)

    def table_source(self, table):
        return self.covers.table_source(table)


@register_model("PixelNet")
class DVBPR(PixelItems, MF):
    input_type = "PAIR"

    def cover_items(self, config, info, d, mask_id):
        if d % 2:
            raise config_error(config, "embedding_size", "an even number: half ID factors, half visual factors")
        cnn = CNNF(d // 2, config["dropout_prob"], config["image_size"] or 224)
        return IdAndCoverItems(info.item_num, d // 2, CoverItems(config, d // 2, encoder=cnn))
