"""MONextItNet: NextItNet over cover encodings.

The recommender is ``REC.model.IDNet.nextitnet.NextItNet`` unchanged; ``PixelItems`` replaces its item-ID table by the image
encoder (``REC.model.pixel``), so fixes and speed-ups of the ID model apply here too.
"""
from __future__ import annotations

from ..IDNet.nextitnet import NextItNet
from ..pixel import PixelItems
from ..registry import register_model


@register_model("PixelNet")
class MONextItNet(PixelItems, NextItNet):
    pass
