"""Moved to ``REC.app.report``; the command is ``python -m REC report``. This path keeps earlier scripts working."""
from .app.moved import forward

forward(__name__, "report", "report")
