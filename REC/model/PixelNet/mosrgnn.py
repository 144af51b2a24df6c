"""MOSRGNN: SR-GNN over cover encodings: node states start from the encoded covers (spec 6.2).

The recommender is ``REC.model.IDNet.srgnn.SRGNN`` unchanged; ``PixelItems`` replaces its item-ID table by the image
encoder (``REC.model.pixel``), so fixes and speed-ups of the ID model apply here too.
"""
from __future__ import annotations

from ..IDNet.srgnn import SRGNN
from ..pixel import PixelItems
from ..registry import register_model


@register_model("PixelNet")
class MOSRGNN(PixelItems, SRGNN):
    pass
