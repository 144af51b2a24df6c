"""The shape of the package: the library below never imports the program on top (``REC.app``), the ground floor
(config, utils, distributed) imports nothing above it, and the command paths of earlier versions still reach the
same code. Read from the source with ``ast``, so a new upward import fails here the day it is written."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

PACKAGE = ROOT / "REC"
# the earlier command paths: three-line modules that forward to REC.app (see REC/app/moved.py)
MOVED = {"REC.evaluate": "REC.app.evaluate", "REC.predict": "REC.app.predict", "REC.sweep": "REC.app.sweep",
         "REC.report": "REC.app.report", "REC.features.__main__": "REC.app.features",
         "REC.features.extract": "REC.app.extract"}
GROUND = ("REC.config", "REC.utils", "REC.distributed")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """The REC modules a file imports (at any depth of the file: a lazy import inside a function counts too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "REC"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "REC":
                found |= {target} | ({f"{target}.{a.name}" for a in node.names} if not node.module else set())
    return found


SOURCES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_library_never_imports_the_program():
    library = [n for n in SOURCES if not within(n, ["REC.app", "REC.__main__", "REC.features", *MOVED])]
    assert len(library) > 80  # the walk found the package
    upward = {n: sorted(i for i in imported(SOURCES[n]) if within(i, ["REC.app"])) for n in library}
    assert not {n: i for n, i in upward.items() if i}, "library modules importing REC.app"


def test_the_ground_floor_imports_only_the_ground_floor():
    ground = [n for n in SOURCES if within(n, GROUND)]
    assert {"REC.config.config", "REC.utils.errors", "REC.distributed"} <= set(ground)
    above = {n: sorted(i for i in imported(SOURCES[n]) if not within(i, GROUND)) for n in ground}
    assert not {n: i for n, i in above.items() if i}, "ground-floor modules importing from above"


def test_data_and_model_do_not_import_the_trainer_or_evaluator():
    lower = [n for n in SOURCES if within(n, ["REC.data", "REC.model"])]
    bad = {n: sorted(i for i in imported(SOURCES[n]) if within(i, ["REC.trainer", "REC.evaluator"]))
           for n in lower}
    assert not {n: i for n, i in bad.items() if i}


@pytest.mark.parametrize("old,new", sorted(MOVED.items()))
def test_earlier_import_paths_are_the_moved_modules(old, new):
    import importlib
    assert importlib.import_module(old) is importlib.import_module(new)


def test_earlier_features_package_serves_the_moved_names():
    import REC.app.extract as moved
    import REC.features as old
    assert old.__all__ and all(getattr(old, name) is getattr(moved, name) for name in old.__all__)


def test_earlier_command_paths_run_the_command():
    from REC.predict import Recommender
    from REC.app.predict import Recommender as moved
    assert Recommender is moved
    for old, command in [("REC.predict", "predict"), ("REC.features", "features")]:
        proc = subprocess.run([sys.executable, "-m", old, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0 and f"usage: python -m REC {command}" in proc.stdout, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "REC.evaluate", "no/such/run"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: 'no/such/run': no config.yaml there"), proc.stderr
