"""Earlier module paths of the commands, kept working: ``python -m REC.predict`` (and ``REC.evaluate``,
``REC.sweep``, ``REC.report``, ``REC.features``, ``REC.features.extract``) and ``from REC.predict import
Recommender`` in scripts written before the commands moved here. Each old path is a three-line module that calls
``forward``."""
from __future__ import annotations

import importlib
import sys


def forward(old_name: str, command: str, module: str) -> None:
    """Run as ``python -m <old path>``: the command, with this process's arguments. Imported: the old name
    becomes the app module itself (``sys.modules``), so attributes, ``monkeypatch`` and ``isinstance`` see one
    object, not a copy."""
    if old_name == "__main__":
        from ..__main__ import main
        sys.exit(main([command, *sys.argv[1:]]))
    sys.modules[old_name] = importlib.import_module(f"REC.app.{module}")
