"""One error policy for every command (REC/utils/errors.py): a UserError is one line and status 2; anything else is
a bug and keeps its traceback, even when it is a ValueError raised while the run is checked before launch."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import REC
from REC.app.launch import main as launch_main
from REC.utils.errors import UserError

from .conftest import call_main, sasrec_args


def test_a_bug_in_preflight_keeps_its_traceback(seq_data, tmp_path, monkeypatch, capsys):
    """A numpy-style ValueError from inside the data preparation is not dressed up as 'error: ...' with status 2."""
    import REC.app.train

    def broken(config):
        raise ValueError("operands could not be broadcast together with shapes (3,) (4,)")
    monkeypatch.setattr(REC.app.train, "prepare_split", broken)
    with pytest.raises(ValueError, match="could not be broadcast"):
        call_main(launch_main, sasrec_args(seq_data, tmp_path, "--epochs=1"), capsys)
    assert not list(tmp_path.rglob("result.json"))


def test_a_user_error_in_preflight_is_one_line_and_status_2(seq_data, tmp_path, capsys):
    """A model setting that spans keys (checked by the model, which does not import the config layer)."""
    status, _, err = call_main(launch_main, sasrec_args(seq_data, tmp_path, "--embedding_size=30", "--n_heads=4"),
                               capsys)
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "key 'n_heads' = 4; expected a divisor of key 'embedding_size' = 30" in err and "Traceback" not in err
    status, _, err = call_main(launch_main, ["--device", "cpu:x", *sasrec_args(seq_data, tmp_path)], capsys)
    assert status == 2 and "--device 'cpu:x'" in err and "Traceback" not in err


def _error_classes():
    found = {}
    for info in pkgutil.walk_packages(REC.__path__, "REC."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == info.name:
                found[f"{info.name}.{name}"] = obj
    return found


# raised for a program's own mistakes or caught inside REC: these are not the user's to fix
INTERNAL = {"REC.model.registry.UnknownModelError",      # a KeyError that the config layer turns into a ConfigError
            "REC.model.encoders.backbone.NoFeatureMapError",  # caught by the feature extractor and re-raised
            "REC.model.pixel.MissingCoverError",         # an item looked up outside its batch's covers: a bug
            "REC.app.report.BadRunFile",                     # caught per run: the report skips it with a warning
            "REC.app.sweep.Stopped",                         # a signal turned into an exception, not an error
            "REC.trainer.trainer.NonFiniteLossError",    # training diverged: its traceback shows where
            "REC.config.config.DuplicateKeyError",       # a YAML error turned into a ConfigError by the loader
            "REC.data.streaming.HashCollision"}          # caught by the CSV reader, which reads again under other keys


def test_every_error_class_is_a_user_error_or_named_internal():
    classes = _error_classes()
    assert "REC.config.config.ConfigError" in classes and "REC.data.interactions.DataError" in classes
    user = {name for name, cls in classes.items() if issubclass(cls, UserError)}
    assert {"REC.trainer.checkpoint.CheckpointError", "REC.utils.integrity.DamagedFileError",
            "REC.distributed.DeviceError", "REC.app.predict.PredictError", "REC.app.sweep.SweepError",
            "REC.app.report.ReportError", "REC.model.base.ModelConfigError"} <= user
    assert set(classes) - user - {"REC.utils.errors.UserError"} <= INTERNAL, sorted(set(classes) - user - INTERNAL)


def test_a_binary_config_file_is_one_line(seq_data, tmp_path, capsys):
    binary = tmp_path / "best.pth"
    binary.write_bytes(b"\x80\x02\xffnot yaml")
    status, _, err = call_main(launch_main, ["--config_file", str(binary), f"--data_path={seq_data}"], capsys)
    assert status == 2 and "cannot be read as UTF-8 text" in err and str(binary) in err and "Traceback" not in err
