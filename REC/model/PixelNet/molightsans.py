"""MOLightSANs: LightSANs over cover encodings.

The recommender is ``REC.model.IDNet.lightsans.LightSANs`` unchanged; ``PixelItems`` replaces its item-ID table by the image
encoder (``REC.model.pixel``), so fixes and speed-ups of the ID model apply here too.
"""
from __future__ import annotations

from ..IDNet.lightsans import LightSANs
from ..pixel import PixelItems
from ..registry import register_model


@register_model("PixelNet")
class MOLightSANs(PixelItems, LightSANs):
    pass
