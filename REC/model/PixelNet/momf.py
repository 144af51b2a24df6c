"""MOMF: MF whose item vector is the item tower over the encoded cover; users keep an ID table.

The recommender is ``REC.model.IDNet.mf.MF`` unchanged; ``PixelItems`` replaces its item-ID table by the image
encoder (``REC.model.pixel``), so fixes and speed-ups of the ID model apply here too.
"""
from __future__ import annotations

from ..IDNet.mf import MF
from ..pixel import PixelItems
from ..registry import register_model


@register_model("PixelNet")
class MOMF(PixelItems, MF):
    pass
