"""MODSSM: DSSM over cover encodings: the mean of the history's encoded covers through the tower.

The recommender is ``REC.model.IDNet.dssm.DSSM`` unchanged; ``PixelItems`` replaces its item-ID table by the image
encoder (``REC.model.pixel``), so fixes and speed-ups of the ID model apply here too.
"""
from __future__ import annotations

from ..IDNet.dssm import DSSM
from ..pixel import PixelItems
from ..registry import register_model


@register_model("PixelNet")
class MODSSM(PixelItems, DSSM):
    pass
