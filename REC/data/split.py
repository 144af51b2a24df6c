"""Leave-one-out split and the training examples derived from it, as in the original, all vectorised."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .interactions import Interactions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSplit:
    """One evaluation target per user, with the full history before it (masked at ranking time).

    Each history is one slice of ``hist_items``, which may be shared: from ``leave_one_out`` it is the
    interactions' own item array, so validation and test cost two ints per user, not a copy of every event."""

    users: np.ndarray         # int64 [U] internal user ids
    targets: np.ndarray       # int64 [U]
    hist_starts: np.ndarray   # int64 [U] where each user's chronological history starts in hist_items
    hist_lengths: np.ndarray  # int64 [U] its length
    hist_items: np.ndarray    # int64

    @classmethod
    def from_csr(cls, users, targets, indptr, items) -> "EvalSplit":
        """Histories given as CSR rows: user k's is ``items[indptr[k]:indptr[k + 1]]``."""
        indptr = np.asarray(indptr, dtype=np.int64)
        return cls(np.asarray(users), np.asarray(targets), indptr[:-1], np.diff(indptr), np.asarray(items))

    def __len__(self) -> int:
        return len(self.users)

    def history(self, k: int) -> np.ndarray:
        return self.hist_items[self.hist_starts[k]:self.hist_starts[k] + self.hist_lengths[k]]

    def histories(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Users a..b-1: each one's history length, and their histories concatenated."""
        lengths = self.hist_lengths[a:b]
        return lengths, gather_segments(self.hist_items, self.hist_starts[a:b], lengths)

    def last_items(self, length: int, a: int = 0, b: int | None = None) -> np.ndarray:
        """[b - a, length] the most recent ``length`` history items of users a..b-1, left-padded with 0 (the
        model input)."""
        b = len(self) if b is None else b
        take = np.minimum(self.hist_lengths[a:b], length)
        return left_pad_segments(self.hist_items, self.hist_starts[a:b] + self.hist_lengths[a:b] - take, take, length)


@dataclass(frozen=True)
class Split:
    """Training part (all but the last two events of each user), validation and test."""

    train_users: np.ndarray   # int64 [U_train]
    train_indptr: np.ndarray  # int64 [U_train + 1]
    train_items: np.ndarray   # int64
    valid: EvalSplit
    test: EvalSplit
    item_num: int
    user_num: int
    # set by REC.data.protocols when a protocol changed the split; None under the standard protocol
    cold_items: np.ndarray | None = None  # int64, sorted internal ids held out of training entirely
    protocol: dict | None = None          # JSON-ready settings and sizes of the protocols applied

    def negative_pool(self) -> np.ndarray | None:
        """Items a training negative may be: None = any of 1..item_num-1; else every item not held out."""
        if self.cold_items is None or len(self.cold_items) == 0:
            return None
        allowed = np.ones(self.item_num, dtype=bool)
        allowed[0] = False
        allowed[self.cold_items] = False
        return np.flatnonzero(allowed)


def leave_one_out(inter: Interactions) -> Split:
    lengths = inter.lengths
    short = lengths < 3
    if short.any():
        # The original crashes on these users; we keep them out of evaluation and say so.
        log.warning("%d users have fewer than 3 interactions; they have no training part and are left out "
                    "of validation and test", int(short.sum()))
    starts, ends = inter.indptr[:-1], inter.indptr[1:]
    train_len = np.maximum(lengths - 2, 0)
    train_indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(train_len, out=train_indptr[1:])
    train_items = gather_segments(inter.items, starts, train_len)

    keep = ~short
    users, starts_k, ends_k = inter.users[keep], starts[keep], ends[keep]
    valid = EvalSplit(users, inter.items[ends_k - 2], starts_k, ends_k - 2 - starts_k, inter.items)
    test = EvalSplit(users, inter.items[ends_k - 1], starts_k, ends_k - 1 - starts_k, inter.items)
    return Split(inter.users, train_indptr, train_items, valid, test, inter.item_num, inter.user_num)


def ragged_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for every (s, n), without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    seg_start = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + (np.arange(total, dtype=np.int64) - seg_start)


# values gathered per block of rows: the index arrays of a gather cost ~32 bytes per value, so a whole-array
# gather at 200M interactions would hold 6 GB of temporaries; in blocks they stay near 130 MB
GATHER_BLOCK = 1 << 22


def _row_blocks(lengths: np.ndarray) -> list[slice]:
    """Consecutive row ranges each holding about GATHER_BLOCK values (a longer row is a block of its own)."""
    ends = np.cumsum(lengths)
    if len(ends) == 0 or ends[-1] <= GATHER_BLOCK:
        return [slice(0, len(lengths))]
    cuts = np.unique(np.searchsorted(ends, np.arange(GATHER_BLOCK, ends[-1], GATHER_BLOCK), side="right"))
    bounds = [0, *(int(c) for c in cuts if 0 < c < len(lengths)), len(lengths)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def gather_segments(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``values[starts[r]:starts[r] + lengths[r]]`` for every r, concatenated: ``values[ragged_positions(...)]``
    in bounded memory."""
    out = np.empty(int(lengths.sum()), dtype=values.dtype)
    offset = 0
    for rows in _row_blocks(lengths):
        part = values[ragged_positions(starts[rows], lengths[rows])]
        out[offset:offset + len(part)] = part
        offset += len(part)
    return out


def left_pad_segments(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int,
                      dtype=np.int64) -> np.ndarray:
    """[len(starts), width]: row r holds ``values[starts[r]:starts[r] + lengths[r]]`` right-aligned, 0 before."""
    out = np.zeros((len(starts), width), dtype=dtype)
    for block in _row_blocks(lengths):
        starts_b, lengths_b = starts[block], lengths[block]
        src = ragged_positions(starts_b, lengths_b)
        rows = np.repeat(np.arange(block.start, block.stop), lengths_b)
        cols = width - np.repeat(lengths_b, lengths_b) + (np.arange(len(src)) -
                                                          np.repeat(np.cumsum(lengths_b) - lengths_b, lengths_b))
        out[rows, cols] = values[src]
    return out


def sequence_chunks(split: Split, max_len: int, dtype=np.int64) -> np.ndarray:
    """[n_chunks, max_len + 1] training chunks, left-padded (``dtype`` int32 halves a table that each process
    holds whole, for datasets that make batches of int64 from it).

    Each user's training run of L items is cut, newest last, into pieces of C = max_len + 1; when L > C
    the oldest ``L mod C`` items are dropped, as in the original (a documented loss of data that we keep
    so that results stay comparable). Users with no training items give no chunk.
    """
    c = max_len + 1
    drop, kept, n_chunks = _chunks_per_row(split, c)
    chunk_user = np.repeat(np.arange(len(n_chunks)), n_chunks)
    chunk_rank = np.arange(len(chunk_user)) - (np.cumsum(n_chunks) - n_chunks)[chunk_user]
    chunk_start = split.train_indptr[:-1][chunk_user] + drop[chunk_user] + chunk_rank * c
    return left_pad_segments(split.train_items, chunk_start, np.minimum(kept, c)[chunk_user], c, dtype)


def sequence_chunk_users(split: Split, max_len: int) -> np.ndarray:
    """int64 [n_chunks]: the internal user id of each row of ``sequence_chunks(split, max_len)``."""
    return np.repeat(split.train_users, _chunks_per_row(split, max_len + 1)[2])


def _chunks_per_row(split: Split, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per training row: items dropped (oldest first), items kept, and the number of chunks of size ``c``."""
    lengths = np.diff(split.train_indptr)
    drop = np.where(lengths > c, lengths % c, 0)
    kept = lengths - drop
    return drop, kept, np.where(kept > 0, np.maximum(kept // c, 1), 0)
