"""MOGRU4Rec: GRU4Rec over cover encodings.

The recommender is ``REC.model.IDNet.gru4rec.GRU4Rec`` unchanged; ``PixelItems`` replaces its item-ID table by the image
encoder (``REC.model.pixel``), so fixes and speed-ups of the ID model apply here too.
"""
from __future__ import annotations

from ..IDNet.gru4rec import GRU4Rec
from ..pixel import PixelItems
from ..registry import register_model


@register_model("PixelNet")
class MOGRU4Rec(PixelItems, GRU4Rec):
    pass
