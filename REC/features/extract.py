"""Moved to ``REC.app.extract``. This path keeps earlier scripts working."""
from ..app.moved import forward

forward(__name__, "features", "extract")
