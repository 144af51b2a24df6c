"""Moved to ``REC.app.predict``; the command is ``python -m REC predict``. This path keeps earlier scripts working."""
from .app.moved import forward

forward(__name__, "predict", "predict")
