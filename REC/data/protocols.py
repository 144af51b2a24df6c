"""Evaluation protocols as transformations of the leave-one-out ``Split``: cold items and few-shot training users.

Each transformation takes a Split and returns a new one; ``apply_protocols`` applies what the config asks, in
one place (``REC.data.prepare_split``), so every model family, the launcher's preflight and the evaluation see
the same data. Everything is vectorised: a protocol costs a few boolean masks and gathers over the training
items, never a Python loop per interaction.

cold_items (``cold_item_ratio`` or ``cold_item_file``): a set of items is held out of training entirely.
- Training: every interaction with a held-out item is removed from the training part, so it is in no training
  input, target, chunk, pair or graph (LightGCN builds from ``train_items``); users keep their other
  interactions. Negatives are drawn from ``Split.negative_pool()``, every item that is not held out.
- Evaluation: valid (target = second-to-last event) and test (target = last event) keep only the users whose
  target is a held-out item, ranked over ALL items (held-out ones included). Held-out items are removed from the
  evaluation histories too, so they occur only as targets: the models never see them as inputs, and masking
  covers the remaining history (a held-out target the user also met earlier is therefore not masked, unlike the
  standard protocol). A user left with no history item by that removal is not evaluated (every model
  needs at least one input item); the count is reported.

Few-shot training users (``train_user_ratio``, ``train_user_cap``): a seeded subset of the users that have a
training part keep it; the others contribute no training interaction. Evaluation still covers every user.
The subset is a prefix of one seeded permutation, so with the same seed a smaller ratio keeps a subset of the
users of a larger one.
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from .interactions import DataError, TokenTable
from .split import EvalSplit, Split, gather_segments
from ..utils.run_layout import COLD_ITEMS_FILE, PROTOCOL_FILE

log = logging.getLogger(__name__)
# independent random streams per protocol, so changing one setting does not reshuffle the other
_COLD_STREAM, _USER_STREAM = 1, 2


def apply_protocols(split: Split, item_tokens: TokenTable, config) -> Split:
    """The split the config asks for; the same object when every protocol is off (the standard protocol)."""
    if config["train_user_ratio"] < 1.0 or config["train_user_cap"] is not None:
        split = keep_training_users(split, config["train_user_ratio"], config["train_user_cap"], config["seed"])
    if config["cold_item_file"]:
        split = hold_out_items(split, read_item_file(config["cold_item_file"], item_tokens, config["dataset"]))
    elif config["cold_item_ratio"] > 0:
        split = hold_out_items(split, sample_items(split.item_num, config["cold_item_ratio"], config["seed"]))
    if split.protocol:
        keys = ("seed", "cold_item_ratio", "cold_item_file", "train_user_ratio", "train_user_cap")
        split = replace(split, protocol={"settings": {k: config[k] for k in keys}, **split.protocol})
        log.info("protocols: %s", json.dumps(split.protocol))
    return split


# ------------------------------------------------------------------------------------------------ cold items
def sample_items(item_num: int, ratio: float, seed: int) -> np.ndarray:
    """Sorted internal ids of round(ratio * items) items (at least one), drawn without replacement."""
    n_items = item_num - 1
    count = min(max(int(round(ratio * n_items)), 1), n_items)
    rng = np.random.default_rng([seed, _COLD_STREAM])
    return np.sort(rng.choice(np.arange(1, item_num, dtype=np.int64), size=count, replace=False))


def read_item_file(path: str | Path, item_tokens: TokenTable, dataset: str) -> np.ndarray:
    """Sorted internal ids of the original item ids listed in ``path`` (one per line, blank lines skipped)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"cold_item_file {str(path)!r}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise DataError(f"cold_item_file {str(path)!r}: not UTF-8 text; expected one item id per line") from None
    tokens = pd.unique(pd.Series([t.strip() for t in lines if t.strip()], dtype=object))
    if len(tokens) == 0:
        raise DataError(f"cold_item_file {str(path)!r}: lists no item id; expected one original item id per line")
    index = pd.Index(item_tokens.to_list()[1:])  # internal id k is row k - 1; row 0 ([PAD]) is no item
    pos = index.get_indexer(tokens)
    unknown = tokens[pos < 0]
    if len(unknown):
        first = ", ".join(repr(t) for t in unknown[:5])
        raise DataError(f"cold_item_file {str(path)!r}: {len(unknown)} of its {len(tokens)} item ids are not items "
                        f"of dataset {dataset!r} (first few: {first}); list original item ids of that dataset's CSV")
    return np.sort(pos.astype(np.int64) + 1)


def hold_out_items(split: Split, items: np.ndarray) -> Split:
    """``split`` with ``items`` held out of training and valid/test restricted to the users whose target is one
    of them (see the module docstring)."""
    cold = np.unique(np.asarray(items, dtype=np.int64))
    if len(cold) and (cold[0] < 1 or cold[-1] >= split.item_num):
        raise DataError(f"held-out item ids must lie in 1..{split.item_num - 1}, got {cold[0]}..{cold[-1]}")
    if len(cold) >= split.item_num - 1:
        raise DataError(f"the cold_items protocol would hold out all {split.item_num - 1} items; nothing is left "
                        f"to train on")
    if split.cold_items is not None:
        cold = np.union1d(cold, split.cold_items)
    is_cold = np.zeros(split.item_num, dtype=bool)
    is_cold[cold] = True
    indptr, train_items = _filter_csr(split.train_indptr, split.train_items, ~is_cold[split.train_items])
    valid, valid_empty = _cold_targets(split.valid, is_cold)
    test, test_empty = _cold_targets(split.test, is_cold)
    if len(valid) == 0 or len(test) == 0:
        raise DataError(f"the cold_items protocol ({len(cold)} of {split.item_num - 1} items held out) leaves "
                        f"{len(valid)} users to validate and {len(test)} to test (users whose target is held out "
                        f"and who keep a history item); hold out more items or use a larger dataset")
    sizes = {"items_held_out": len(cold), "items_total": split.item_num - 1,
             "train_interactions_removed": len(split.train_items) - len(train_items),
             "train_interactions_kept": len(train_items),
             "valid_users": len(valid), "test_users": len(test),
             "valid_users_without_history": valid_empty, "test_users_without_history": test_empty}
    protocol = {**(split.protocol or {}), "cold_items": sizes}
    return replace(split, train_indptr=indptr, train_items=train_items, valid=valid, test=test, cold_items=cold,
                   protocol=protocol)


def _cold_targets(ev: EvalSplit, is_cold: np.ndarray) -> tuple[EvalSplit, int]:
    """The users of ``ev`` whose target is held out, with the held-out items removed from their histories; and
    how many such users were dropped because nothing else was left in their history."""
    rows = np.flatnonzero(is_cold[ev.targets])
    lengths = ev.hist_lengths[rows]
    hist = gather_segments(ev.hist_items, ev.hist_starts[rows], lengths)
    sub_indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=sub_indptr[1:])
    indptr, hist = _filter_csr(sub_indptr, hist, ~is_cold[hist])
    has_history = np.diff(indptr) > 0
    if not has_history.all():
        keep_rows = np.flatnonzero(has_history)
        lengths = np.diff(indptr)[keep_rows]
        hist = gather_segments(hist, indptr[keep_rows], lengths)
        indptr = np.zeros(len(keep_rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        rows = rows[keep_rows]
    return EvalSplit.from_csr(ev.users[rows], ev.targets[rows], indptr, hist), int((~has_history).sum())


def _filter_csr(indptr: np.ndarray, values: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR rows with only the ``keep`` entries: the row count is unchanged, rows may become empty."""
    # int32 running counts halve the temporary at 200M entries; int64 only where the count could overflow
    kept = np.zeros(len(keep) + 1, dtype=np.int32 if len(keep) < 2 ** 31 else np.int64)
    np.cumsum(keep, out=kept[1:])
    return kept[indptr].astype(np.int64), values[keep]


# ------------------------------------------------------------------------------------------ few-shot users
def keep_training_users(split: Split, ratio: float, cap: int | None, seed: int) -> Split:
    """``split`` whose training part is kept for round(ratio * n) (at least one, at most ``cap``) of the n users
    that have one, chosen by a seeded permutation; the others' training rows become empty."""
    lengths = np.diff(split.train_indptr)
    candidates = np.flatnonzero(lengths > 0)  # rows of train_users
    count = max(int(round(ratio * len(candidates))), 1) if len(candidates) else 0
    if cap is not None:
        count = min(count, cap)
    order = np.random.default_rng([seed, _USER_STREAM]).permutation(candidates)
    chosen = np.zeros(len(lengths), dtype=bool)
    chosen[order[:count]] = True
    new_lengths = np.where(chosen, lengths, 0)
    indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(new_lengths, out=indptr[1:])
    train_items = gather_segments(split.train_items, split.train_indptr[:-1][chosen], lengths[chosen])
    sizes = {"users_with_training": len(candidates), "users_kept": int(count),
             "train_interactions_removed": len(split.train_items) - len(train_items),
             "train_interactions_kept": len(train_items)}
    protocol = {**(split.protocol or {}), "train_users": sizes}
    return replace(split, train_indptr=indptr, train_items=train_items, protocol=protocol)


def training_users(split: Split) -> np.ndarray:
    """Sorted internal ids of the users with at least one training interaction."""
    return np.sort(split.train_users[np.diff(split.train_indptr) > 0])


# ------------------------------------------------------------------------------------------------- saving
def save_protocol(split: Split, item_tokens: TokenTable, run_dir: str | Path) -> None:
    """``protocol.json`` (settings and sizes) and, under cold_items, ``cold_items.txt`` (original item ids, one
    per line, the format ``cold_item_file`` reads) in the run directory; nothing under the standard protocol."""
    if not split.protocol:
        return
    run_dir = Path(run_dir)
    (run_dir / PROTOCOL_FILE).write_text(json.dumps(split.protocol, indent=2) + "\n")
    if split.cold_items is not None:
        tokens = item_tokens.to_list()
        (run_dir / COLD_ITEMS_FILE).write_text("".join(f"{tokens[i]}\n" for i in split.cold_items))
