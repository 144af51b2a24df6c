"""What a run directory holds, named once.

``main.py`` makes one directory per run (``<output_dir>/<model>-<dataset>-<time>``); training, resume,
``REC.app.evaluate``, ``REC.app.predict``, ``REC.app.sweep``, ``REC.app.report`` and init_from all read it. Each file's name and
role are here, so that no module spells them itself and a change of layout is one edit.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

CONFIG_FILE = "config.yaml"                    # the merged config the run trains with (written before it starts)
RUN_ID_FILE = "run_id"                         # a random id, so a checkpoint is never resumed into another run
VOCABULARY_FILE = "vocabulary.npz"             # user and item tokens in internal order, [PAD] first
DATA_FILE = "data.json"                        # the CSV's path, content hash and counts at the start of the run
PROTOCOL_FILE = "protocol.json"                # an evaluation protocol's settings, when one is on
COLD_ITEMS_FILE = "cold_items.txt"             # the cold-items protocol's held-out items
TRANSFER_REPORT_FILE = "transfer_report.json"  # what init_from loaded and why the rest did not
LAST_CHECKPOINT = "last.pth"                   # the newest epoch's state: what --resume continues from
BEST_CHECKPOINT = "best.pth"                   # the best validation epoch's weights: evaluate, predict, init_from
RESULT_FILE = "result.json"                    # written once the run is tested: a directory with it is finished
SWEEP_FILE = "sweep.json"                      # in a sweep's directory (REC.app.sweep), which holds trial runs


class MissingCheckpointError(UserError, FileNotFoundError):
    """A checkpoint the command was told to read is not in the run directory."""


@dataclass(frozen=True)
class RunDir:
    """A run directory and its files by role."""

    path: Path

    def __post_init__(self):  # a str is taken too; frozen, so set through object
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def last(self) -> Path:
        return self.path / LAST_CHECKPOINT

    @property
    def best(self) -> Path:
        return self.path / BEST_CHECKPOINT

    @property
    def result(self) -> Path:
        return self.path / RESULT_FILE

    @property
    def transfer_report(self) -> Path:
        return self.path / TRANSFER_REPORT_FILE

    def checkpoint(self, name: str = BEST_CHECKPOINT) -> Path:
        """A checkpoint file of the run, by file name (``best.pth`` unless a command is told another); a missing
        one is a MissingCheckpointError that says when each checkpoint is written."""
        path = self.path / name
        if not path.is_file():
            raise MissingCheckpointError(f"{path} does not exist; a run directory holds {BEST_CHECKPOINT} from its "
                                         f"first validation and {LAST_CHECKPOINT} after every epoch")
        return path

    @property
    def finished(self) -> bool:
        return self.result.is_file()
