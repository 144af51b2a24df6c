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


def test_load_run_reads_back_the_weights_each_checkpoint_holds(seq_data, tmp_path):
    """One way to read a run back (training's resume, evaluate, predict): the named checkpoint's exact weights on
    the model built from config.yaml, or the fresh model when none is named, with the run's own ids."""
    import torch

    from REC.app.loaded_run import load_run
    from REC.trainer.checkpoint import load, state_digest

    from .conftest import run_main, sasrec_args

    run_dir = run_main(sasrec_args(seq_data, tmp_path, "--epochs=1")).run_dir
    cpu = torch.device("cpu")
    best = load_run(run_dir, cpu)
    reference = load_run(run_dir, cpu, None)
    reference.model.load_state_dict(load(RunDir(run_dir).best)["model"])
    assert state_digest(best.model) == state_digest(reference.model)
    assert set(best.checkpoint) >= {"model", "run_id"}
    fresh = load_run(run_dir, cpu, None)
    assert fresh.checkpoint is None and state_digest(fresh.model) != state_digest(best.model)
    assert not best.data_check.worth_a_warning  # the CSV the run was trained on
    assert best.inter.item_tokens.to_list() == fresh.inter.item_tokens.to_list() and best.split.item_num > 1


def test_only_load_run_puts_a_checkpoint_into_a_model_built_from_a_run():
    """Resume's optimizer state and the trainer's best-epoch reload aside, every reader of a run's weights goes
    through REC/app/loaded_run.py: a command that built its own model from config.yaml would drift from it."""
    callers = []
    for path in sorted((ROOT / "REC").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "load_weights":
                callers.append(str(path.relative_to(ROOT)))
    assert sorted(set(callers)) == ["REC/app/loaded_run.py", "REC/trainer/trainer.py"], callers
