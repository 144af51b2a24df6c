"""``python -m REC.features`` of earlier versions: the same as ``python -m REC features``."""
from ..app.moved import forward

forward(__name__, "features", "features")
