"""MOSRGNN: SR-GNN over cover encodings: node states start from the encoded covers.

The recommender is ``REC.model.IDNet.srgnn.SRGNN`` unchanged; ``PixelItems`` replaces its item-ID table by the image
encoder (``REC.model.pixel``), so fixes and speed-ups of the ID model apply here too.
"""
from __future__ import annotations

import math

from torch import nn

from ..IDNet.srgnn import SRGNN
from ..pixel import PixelItems
from ..registry import register_model


@register_model("PixelNet")
class MOSRGNN(PixelItems, SRGNN):
    def __init__(self, config, info):
        super().__init__(config, info)
        bound = 1.0 / math.sqrt(config["embedding_size"])
        for p in self.item_embedding.visual_encoder.head.parameters():  # the original re-draws the head too
            nn.init.uniform_(p, -bound, bound)
