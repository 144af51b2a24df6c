"""MOSASRec: SASRec over cover encodings.

The recommender is ``REC.model.IDNet.sasrec.SASRec`` unchanged; ``PixelItems`` replaces its item-ID table by the image
encoder (``REC.model.pixel``), so fixes and speed-ups of the ID model apply here too.
"""
from __future__ import annotations

from ..IDNet.sasrec import SASRec
from ..pixel import PixelItems
from ..registry import register_model


@register_model("PixelNet")
class MOSASRec(PixelItems, SASRec):
    pass
