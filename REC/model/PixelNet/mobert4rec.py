"""MOBERT4Rec: BERT4Rec over cover encodings; the mask token is the encoder's output for the all-ones image.

The recommender is ``REC.model.IDNet.bert4rec.BERT4Rec`` unchanged; ``PixelItems`` replaces its item-ID table by the image
encoder (``REC.model.pixel``), so fixes and speed-ups of the ID model apply here too.
"""
from __future__ import annotations

from ..IDNet.bert4rec import BERT4Rec
from ..pixel import PixelItems
from ..registry import register_model


@register_model("PixelNet")
class MOBERT4Rec(PixelItems, BERT4Rec):
    pass
