"""Moved to ``REC.app.sweep``; the command is ``python -m REC sweep``. This path keeps earlier scripts working."""
from .app.moved import forward

forward(__name__, "sweep", "sweep")
