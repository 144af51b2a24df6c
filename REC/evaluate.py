"""Moved to ``REC.app.evaluate``; the command is ``python -m REC evaluate``. This path keeps earlier scripts working."""
from .app.moved import forward

forward(__name__, "evaluate", "evaluate")
