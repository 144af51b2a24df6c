"""MOFM: FM over cover encodings: <sum of the history's encoded covers, candidate's>.

The recommender is ``REC.model.IDNet.fm.FM`` unchanged; ``PixelItems`` replaces its item-ID table by the image
encoder (``REC.model.pixel``), so fixes and speed-ups of the ID model apply here too.
"""
from __future__ import annotations

from ..IDNet.fm import FM
from ..pixel import PixelItems
from ..registry import register_model


@register_model("PixelNet")
class MOFM(PixelItems, FM):
    pass
