"""Discovery by import: a registry is filled by the decorators of its package's modules, so importing every
module is what makes a new one count. No hand-kept import list can then forget a file, and no name is
guessed (the original probed module names). REC/utils is the bottom layer: this imports nothing from REC."""
from __future__ import annotations

import importlib
import pkgutil


def import_submodules(package_name: str) -> None:
    """Import every module directly inside the package ``package_name`` (not its subpackages' modules).

    ``__main__`` is skipped: it is a package's command line, and importing it would run it. Safe to call from
    the package's own ``__init__`` once the names its modules import from it are defined; modules already
    imported are not run again.
    """
    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "__main__":
            importlib.import_module(f"{package_name}.{info.name}")
