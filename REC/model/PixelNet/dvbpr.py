"""DVBPR (Kang et al., ICDM 2017): BPR with an item vector learned from its image by a CNN-F, end to end.

score(u, i) = γ_u·γ_i + θ_u·CNNF(cover_i): ID factors plus visual factors, each half of ``embedding_size``
(spec 6.2). The original ships this model but cannot run it (its dataset yields two values, its forward unpacks
three, spec 9.15); this one runs. It is the same score as a dot product of [γ_u; θ_u] with [γ_i; CNNF(cover_i)],
which is how it is computed, so full ranking is one matrix product.

Deliberate differences: the CNN-F flattens an adaptive average pool of the last feature map to the 22x2 grid
its first fully connected layer expects (at the original's 224 px this pool is the identity), so other cover
sizes work too; the tables start xavier-normal like MF's instead of U(0, 1), whose dot products of ~d/8 saturate
the sigmoid from the first step.
"""
from __future__ import annotations

import torch
from torch import nn

from ..base import DatasetInfo, RecModel, bpr_loss
from ..layers import Dropout
from ..pixel import CoverItems
from ..registry import register_model


class CNNF(nn.Module):
    """The CNN-F of the DVBPR paper (spec 6.2): 5 convolutions and 3 fully connected layers, xavier-uniform."""

    input_size, is_convolutional = 224, True
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


@register_model("PixelNet")
class DVBPR(RecModel):
    input_type = "PAIR"
    item_source = "covers"

    def __init__(self, config, info: DatasetInfo):
        super().__init__(config, info)
        d = config["embedding_size"]
        if d % 2:
            raise ValueError(f"embedding_size {d} must be even: half ID factors, half visual factors")
        half = d // 2
        self.user_embedding = nn.Embedding(info.user_num, d)          # [γ_u; θ_u]
        self.item_id_embedding = nn.Embedding(info.item_num, half)    # γ_i
        nn.init.xavier_normal_(self.user_embedding.weight)
        nn.init.xavier_normal_(self.item_id_embedding.weight)
        cnn = CNNF(half, config["dropout_prob"], config["image_size"] or CNNF.input_size)
        self.item_embedding = CoverItems(config, half, encoder=cnn)

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.item_id_embedding(ids), self.item_embedding(ids)], -1)

    def forward(self, batch):
        self.item_embedding.load_batch(batch["cover_ids"], batch["covers"])
        try:
            users = self.user_embedding(batch["user_id"])
            pos = (users * self.item_vectors(batch["items"])).sum(-1)
            neg = (users * self.item_vectors(batch["negatives"])).sum(-1)
            return bpr_loss(pos, neg).mean()
        finally:
            self.item_embedding.release()

    def item_representations(self):
        return torch.cat([self.item_id_embedding.weight, self.item_embedding.weight], -1)

    def user_representations(self, batch):
        return self.user_embedding(batch["user_id"])

    @property
    def cover_width(self) -> int:
        return self.item_embedding.embedding_dim

    def encode_covers(self, covers: torch.Tensor) -> torch.Tensor:
        return self.item_embedding.encode(covers)

    def use_cover_table(self, table: torch.Tensor | None) -> None:
        self.item_embedding.use_table(table)
