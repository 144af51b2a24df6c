"""Live logging (log_tensorboard / log_wandb): a missing package is a ConfigError before training, and the
trainer's records reach the writer. Neither package is installed here, so a small recording class stands in for
torch's SummaryWriter."""
from __future__ import annotations

import sys

import pytest

from REC.config import ConfigError
from REC.app.configure import build_config
from REC.app.train import preflight
from REC.trainer import live_log

DEMO = ["IDNet/sasrec.yaml", "overall/ID.yaml", "demo/demo.yaml"]


class RecordingWriter:
    """The part of SummaryWriter's interface that the TensorBoard writer uses."""
    made = []

    def __init__(self, log_dir):
        self.log_dir, self.points, self.closed, self.flushes = log_dir, [], False, 0
        RecordingWriter.made.append(self)

    def add_scalar(self, tag, value, step):
        self.points.append((tag, value, step))

    def flush(self):
        self.flushes += 1

    def close(self):
        self.closed = True


def test_defaults_are_off_and_log_nothing(tmp_path):
    config = build_config(DEMO)
    assert (config["log_tensorboard"], config["log_wandb"], config["wandb_project"]) == (False, False, "PixelRec")
    live = live_log.open_live_log(config, tmp_path)
    assert live.writers == []
    live.log_epoch(0, {"epoch": 0, "train_loss": 1.0})
    live.log_test({"ndcg@10": 0.1})
    live.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key, module", [("log_tensorboard", "tensorboard"), ("log_wandb", "wandb")])
def test_missing_package_is_a_config_error_in_preflight(monkeypatch, key, module):
    monkeypatch.setitem(sys.modules, module, None)  # import <module> raises ImportError
    config = build_config(DEMO, [f"--{key}=true"])
    with pytest.raises(ConfigError, match=rf"{key}: true needs the {module} package \(pip install {module}\); "
                                          rf"or set {key}: false"):
        preflight(config)  # its first check: nothing read, no model built


def test_epoch_and_test_records_reach_the_writer(tmp_path):
    config = build_config(DEMO, ["--log_tensorboard=true"])
    RecordingWriter.made.clear()
    live = live_log.open_live_log(config, tmp_path, summary_writer=RecordingWriter)
    (writer,) = RecordingWriter.made
    assert writer.log_dir == str(tmp_path / "tensorboard")
    live.log_epoch(0, {"epoch": 0, "train_loss": 2.5, "train_seconds": 3.0})  # a validation-free epoch
    live.log_epoch(1, {"epoch": 1, "train_loss": 2.0, "train_seconds": 2.9, "eval_seconds": 0.4,
                       "valid": {"recall@10": 0.3, "ndcg@10": 0.2}})
    live.log_test({"recall@10": 0.31, "ndcg@10": 0.21}, 1)
    live.close()
    assert writer.points == [
        ("train/loss", 2.5, 0), ("train/seconds", 3.0, 0),
        ("train/loss", 2.0, 1), ("train/seconds", 2.9, 1), ("eval/seconds", 0.4, 1),
        ("valid/recall@10", 0.3, 1), ("valid/ndcg@10", 0.2, 1),
        ("test/recall@10", 0.31, 1), ("test/ndcg@10", 0.21, 1)]
    assert writer.closed and writer.flushes == 3


def test_only_rank_0_logs(tmp_path, monkeypatch):
    monkeypatch.setattr(live_log.dist, "is_main", lambda: False)
    RecordingWriter.made.clear()
    live = live_log.open_live_log(build_config(DEMO, ["--log_tensorboard=true"]), tmp_path,
                                  summary_writer=RecordingWriter)
    assert live.writers == [] and RecordingWriter.made == []
