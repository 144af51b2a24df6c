"""A run directory's files are named once (REC/utils/run_layout.py): no other module spells a name itself."""
from __future__ import annotations

import ast
from pathlib import Path

from REC.utils import run_layout
from REC.utils.run_layout import RunDir

from .conftest import ROOT

# names with an extension: "run_id" is also the checkpoints' key for the same id, a string the check cannot tell apart
NAMES = {value for key, value in vars(run_layout).items() if key.endswith(("_FILE", "_CHECKPOINT")) and "." in value}


def test_no_module_spells_a_run_file_name_itself():
    assert {"config.yaml", "last.pth", "best.pth", "result.json", "transfer_report.json", "sweep.json"} <= NAMES
    spelled = []
    for path in sorted((ROOT / "REC").rglob("*.py")):
        if path.name == "run_layout.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in NAMES:
                spelled.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not spelled, spelled


def test_run_dir_names_its_files(tmp_path):
    run = RunDir(str(tmp_path))
    assert run.path == Path(tmp_path) and run.config == tmp_path / "config.yaml"
    assert (run.last, run.best) == (tmp_path / "last.pth", tmp_path / "best.pth")
    run.best.write_bytes(b"")
    assert run.checkpoint() == run.best
    assert not run.finished
    run.result.write_text("{}")
    assert run.finished and run.transfer_report.name == "transfer_report.json"


def test_a_missing_checkpoint_is_a_user_error_that_says_when_each_is_written(tmp_path):
    import pytest

    from REC.utils.errors import UserError
    with pytest.raises(UserError, match=r"last.pth does not exist; a run directory holds best.pth from its first "
                                         r"validation and last.pth after every epoch") as err:
        RunDir(tmp_path).checkpoint("last.pth")
    assert isinstance(err.value, FileNotFoundError)
