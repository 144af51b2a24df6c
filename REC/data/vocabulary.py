"""A run's own vocabulary: the original ids behind its internal ids, and the content hash of the CSV it read.

Internal ids are given in order of first appearance in the CSV, so the same interactions in another row order
get other ids, and a model's rows then belong to other items. Whatever reads a finished run (evaluate, predict,
resume) therefore maps the CSV through the ids saved with the run instead of numbering them again, and says
when the CSV is no longer the file the run was trained on.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..utils.run_layout import DATA_FILE, VOCABULARY_FILE
from .interactions import DataError, Interactions, TokenTable, csv_path, load_interactions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunVocabulary:
    user_tokens: TokenTable
    item_tokens: TokenTable
    csv_digest: str
    csv: str


@dataclass(frozen=True)
class DataCheck:
    """How the CSV of today relates to the one a run was trained on."""

    changed: bool               # the file's content differs (even a mere reordering of its rows)
    csv: str
    trained_on: str | None      # content hash recorded by the run (None: a run made before runs recorded it)
    now: str
    rows_dropped: int = 0       # interactions whose item or user the run never saw
    unknown_items: int = 0      # distinct item ids of the CSV unknown to the run
    unknown_users: int = 0

    @property
    def worth_a_warning(self) -> bool:
        """The run's figures may not be reproduced: the CSV changed, or the run is too old to tell."""
        return self.changed or self.trained_on is None

    def describe(self, run_dir) -> str:
        if self.trained_on is None:
            return (f"run {str(run_dir)!r} has no {VOCABULARY_FILE} (made by an older version), so its ids were "
                    f"rebuilt from {self.csv} as it is now")
        if not self.changed:
            return f"{self.csv} is the file run {str(run_dir)!r} was trained on"
        return (f"{self.csv} has changed since run {str(run_dir)!r} was trained on it (content hash "
                f"{self.trained_on[:12]} then, {self.now[:12]} now); its ids were mapped through the run's "
                f"vocabulary: {self.rows_dropped} interactions skipped ({self.unknown_items} item ids and "
                f"{self.unknown_users} user ids the run never saw)")


def save_run_vocabulary(inter: Interactions, config, run_dir: Path) -> None:
    run_dir = Path(run_dir)
    with open(run_dir / VOCABULARY_FILE, "wb") as f:
        np.savez(f, user_blob=inter.user_tokens.blob, user_offsets=inter.user_tokens.offsets,
                 item_blob=inter.item_tokens.blob, item_offsets=inter.item_tokens.offsets)
    info = {"csv": str(csv_path(config["data_path"], config["dataset"]).resolve()),
            "csv_blake2b": inter.csv_digest, "interactions": int(len(inter.items)),
            "users": inter.user_num - 1, "items": inter.item_num - 1}
    (run_dir / DATA_FILE).write_text(json.dumps(info, indent=2) + "\n")


def load_run_vocabulary(run_dir: Path) -> RunVocabulary | None:
    """The run's saved vocabulary, None for a run made before runs saved one."""
    run_dir = Path(run_dir)
    vocab_file, data_file = run_dir / VOCABULARY_FILE, run_dir / DATA_FILE
    if not vocab_file.is_file():
        return None
    try:
        info = json.loads(data_file.read_text())
        with np.load(vocab_file, allow_pickle=False) as z:
            users = TokenTable(z["user_blob"], z["user_offsets"])
            items = TokenTable(z["item_blob"], z["item_offsets"])
        return RunVocabulary(users, items, str(info["csv_blake2b"]), str(info["csv"]))
    except Exception as exc:  # noqa: BLE001  (zip, json, key and OS errors all mean the same: unreadable)
        raise DataError(f"{vocab_file} or {data_file}: unreadable ({type(exc).__name__}: {exc}); these files "
                        f"hold the run's id maps, written when the run started") from None


def load_run_interactions(config, run_dir: Path) -> tuple[Interactions, DataCheck]:
    """The CSV's interactions in the run's internal ids, and how the CSV compares with the run's."""
    inter = load_interactions(config["data_path"], config["dataset"], config["cache_dir"])
    csv = str(csv_path(config["data_path"], config["dataset"]))
    vocab = load_run_vocabulary(run_dir)
    if vocab is None:
        return inter, DataCheck(False, csv, None, inter.csv_digest)
    changed = vocab.csv_digest != inter.csv_digest
    if not changed and _same(inter.user_tokens, vocab.user_tokens) and _same(inter.item_tokens, vocab.item_tokens):
        return inter, DataCheck(False, csv, vocab.csv_digest, inter.csv_digest)
    mapped, dropped, unknown_items, unknown_users = through_vocabulary(inter, vocab.user_tokens, vocab.item_tokens)
    return mapped, DataCheck(changed, csv, vocab.csv_digest, inter.csv_digest, dropped, unknown_items, unknown_users)


def through_vocabulary(inter: Interactions, users: TokenTable, items: TokenTable
                       ) -> tuple[Interactions, int, int, int]:
    """``inter`` renumbered with the given tokens; interactions whose item or user is not among them are dropped
    (each user's order is kept). Returns the interactions, the rows dropped and the unknown item and user counts."""
    item_map, user_map = _index_map(inter.item_tokens, items), _index_map(inter.user_tokens, users)
    lengths = inter.lengths
    new_items, new_users = item_map[inter.items], user_map[inter.users]
    keep = (new_items > 0) & np.repeat(new_users > 0, lengths)
    per_sequence = np.bincount(np.repeat(np.arange(len(lengths)), lengths)[keep], minlength=len(lengths))
    nonempty = per_sequence > 0
    indptr = np.zeros(int(nonempty.sum()) + 1, dtype=np.int64)
    np.cumsum(per_sequence[nonempty], out=indptr[1:])
    mapped = replace(inter, users=new_users[nonempty], indptr=indptr, items=new_items[keep],
                     user_tokens=users, item_tokens=items)
    return (mapped, int((~keep).sum()), int((item_map[1:] == 0).sum()), int((user_map[1:] == 0).sum()))


def _index_map(have: TokenTable, want: TokenTable) -> np.ndarray:
    """int64 [len(have)]: the id in ``want`` of each token of ``have`` (0 for padding and unknown tokens)."""
    position = pd.Index(want.to_list()[1:]).get_indexer(have.to_list()[1:])
    return np.concatenate([[0], position + 1]).astype(np.int64)


def _same(a: TokenTable, b: TokenTable) -> bool:
    return np.array_equal(a.offsets, b.offsets) and np.array_equal(a.blob, b.blob)
