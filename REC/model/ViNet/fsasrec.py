"""FSASRec: SASRec whose item vectors come from frozen visual features instead of an ID table.

``feature_mode: frozen``: item(i) = ReLU(W f_i + b), the original's freeze_model; ``hybrid``: item(i) =
ReLU(W [f_i; e_i] + b) with a trainable ID embedding e_i, its hybrid_model. Everything else (the transformer,
next-item BPR over every position, last-position scoring) is IDNet SASRec's. As the original, the whole model,
the feature projection included, is initialised N(0, initializer_range) with zero biases. The original's third
mode (semantic IDs) is not implemented.
"""
from __future__ import annotations

import torch
from torch import nn

from ..base import DatasetInfo
from ..IDNet.sasrec import SASRec
from ..layers import init_normal_
from ..registry import register_model
from .feature_table import FeatureTable, feature_table_from_config


class FeatureItems(nn.Module):
    """Stands in for SASRec's ``nn.Embedding``: ``items(ids)`` gives [..., d] vectors and ``items.weight`` the
    whole [item_num, d] table (computed, so evaluation scores every item through the projection)."""

    def __init__(self, features: FeatureTable, d: int, id_embedding: nn.Embedding | None = None):
        super().__init__()
        self.features, self.id_embedding = features, id_embedding
        extra = id_embedding.embedding_dim if id_embedding is not None else 0
        self.projection = nn.Linear(features.width + extra, d)
        self.embedding_dim = d

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        f = self.features(ids)
        if self.id_embedding is not None:
            f = torch.cat([f, self.id_embedding(ids)], -1)
        return torch.relu(self.projection(f))

    @property
    def weight(self) -> torch.Tensor:
        f = self.features.table  # the whole table without a gathered copy
        if self.id_embedding is not None:
            f = torch.cat([f, self.id_embedding.weight], -1)
        return torch.relu(self.projection(f))


@register_model("ViNet")
class FSASRec(SASRec):

    def __init__(self, config, info: DatasetInfo):
        super().__init__(config, info)
        d, mode = config["embedding_size"], config["feature_mode"]
        features = feature_table_from_config(config, info)
        # hybrid: an ID table as wide as the model, as the original's HYItemEncoder
        ids = nn.Embedding(info.item_num, d, padding_idx=0) if mode == "hybrid" else None
        # replaces SASRec's ID table (built by SASRec.__init__ and dropped here)
        self.item_embedding = FeatureItems(features, d, ids)
        std = config["initializer_range"]
        self.item_embedding.apply(lambda m: init_normal_(m, std))

    @property
    def features(self) -> FeatureTable:
        return self.item_embedding.features
