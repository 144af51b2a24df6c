"""Pop: rank every item by its number of training interactions. Not learned; the floor every model must beat."""
from __future__ import annotations

import numpy as np
import torch

from ..base import DatasetInfo, RecModel
from ..registry import register_model
from ...utils.batch_keys import USER_ID


@register_model("IDNet")
class Pop(RecModel):
    input_type = None  # evaluated as built: no training examples, no epoch

    def __init__(self, config, info: DatasetInfo):
        super().__init__(config, info)
        counts = np.bincount(info.train_items, minlength=info.item_num) if info.train_items is not None \
            else np.zeros(info.item_num)
        self.register_buffer("counts", torch.as_tensor(counts, dtype=torch.float32)[:, None])

    def paper_loss(self, batch):
        raise RuntimeError("Pop is not trained")

    def item_representations(self):
        return self.counts

    def user_representations(self, batch):
        return torch.ones(len(batch[USER_ID]), 1, device=self.counts.device)
