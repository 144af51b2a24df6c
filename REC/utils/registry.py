"""Registries and discovery by import: a registry is filled by the decorators of its package's modules, so
importing every module is what makes a new one count. No hand-kept import list can then forget a file, and no name is
guessed (the original probed module names). REC/utils is the bottom layer: this imports nothing from REC."""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
import re


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


def _natural(name: str) -> list:
    """Sort key that puts clip_rn50x4 before clip_rn50x16."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


class Registry:
    """name -> entry, filled by decorators (timm's ``register_model`` pattern): models, image encoders, training-
    example types and metrics are each one of these, so registering, looking up and listing work alike.

    ``register(name)`` decorates an entry; a second, different entry under a name is refused (a renamed copy
    of a module must not win by import order). ``get(name)`` raises ``error`` naming the unknown name, the
    closest known one and every known one. ``names(pattern)`` lists the names matching a shell pattern, without
    regard to case. ``fold_case`` makes lookups case-insensitive (metrics: ``ndcg`` is ``NDCG``). ``fill``, when
    given, is called before the first lookup to import the modules whose decorators register the entries.
    """

    def __init__(self, kind: str, *, error: type[Exception] = KeyError, fold_case: bool = False, fill=None):
        self.kind, self.error, self.fold_case, self._fill = kind, error, fold_case, fill
        self._entries: dict[str, object] = {}
        self._names: dict[str, str] = {}  # key -> the name as registered

    def _key(self, name: str) -> str:
        return name.lower() if self.fold_case else name

    def _filled(self) -> None:
        if self._fill is not None:
            fill, self._fill = self._fill, None
            try:
                fill()
            except BaseException:  # a module that fails to import: fail again on the next lookup, not "unknown"
                self._fill = fill
                raise

    def register(self, name: str):
        def deco(entry):
            self.add(name, entry)
            return entry
        return deco

    def add(self, name: str, entry) -> None:
        key = self._key(name)
        if key in self._entries and self._entries[key] is not entry:
            raise ValueError(f"{self.kind} {name!r} is already registered to {self._entries[key]!r}")
        self._entries[key], self._names[key] = entry, name

    def remove(self, name: str) -> None:
        """Take an entry out (a test's temporary registration)."""
        key = self._key(name)
        self._entries.pop(key, None)
        self._names.pop(key, None)

    def get(self, name: str):
        self._filled()
        try:
            return self._entries[self._key(name)]
        except KeyError:
            raise self.error(self.unknown(name)) from None

    def unknown(self, name: str) -> str:
        """The message for a name that is not registered: the closest known name, then all of them."""
        close = difflib.get_close_matches(self._key(name), list(self._entries), n=1)
        hint = f" (did you mean {self._names[close[0]]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; known: {self.names()}"

    def names(self, pattern: str = "*") -> list[str]:
        self._filled()
        return sorted((n for n in self._names.values() if fnmatch.fnmatch(n.lower(), pattern.lower())), key=_natural)

    def items(self) -> list[tuple[str, object]]:
        self._filled()
        return [(self._names[key], entry) for key, entry in self._entries.items()]

    def __contains__(self, name: str) -> bool:
        self._filled()
        return self._key(name) in self._entries

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        self._filled()
        return len(self._entries)

    def __getitem__(self, name: str):
        return self.get(name)
