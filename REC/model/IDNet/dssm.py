"""DSSM (Huang et al., CIKM 2013) in PixelRec's IDNet form: the user is the mean of the history's
item embeddings passed through an MLP tower, the item is its embedding, the score their dot product.

Fix: every example of a batch is trained (the original used the first one only).
"""
from __future__ import annotations

from torch import nn

from ..base import DatasetInfo, config_error, key_ref
from ..layers import mlp_layers
from ..registry import register_model
from .fm import HistoryTower


@register_model("IDNet")
class DSSM(HistoryTower):
    def __init__(self, config, info: DatasetInfo):
        super().__init__(config, info)
        d, sizes = config["embedding_size"], list(config["mlp_hidden_size"])
        if len(sizes) >= 2 and (sizes[0] != d or sizes[-1] != d):
            # the user vector is scored against the d-wide item table, so the tower must map d to d
            raise config_error(config, "mlp_hidden_size",
                               f"[] or widths that start and end with {key_ref(config, 'embedding_size')}")
        self.tower = mlp_layers(sizes, config["dropout_prob"])
        for m in self.tower:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def user_vector(self, hist_emb, real):
        real = real[:, :, None].to(hist_emb.dtype)
        return self.tower((hist_emb * real).sum(1) / (real.sum(1) + 1e-8))
