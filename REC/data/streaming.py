"""The interactions CSV read in bounded chunks: the same prepared arrays as reading it whole, at a fraction of the
memory.

Reading a 200M-row file whole holds every id as a Python string (about 130 bytes per interaction, 34 GiB for the
full PixelRec). Here only ``chunk_rows`` rows are text at a time; each chunk's ids are mapped to integers through
maps that grow with the number of *distinct* ids (8 bytes of hash, 8 of check hash, 8 of id and the id's UTF-8
bytes each), and the sorts run on compact integer arrays. Peak memory is then about 27 bytes per interaction plus
about 40 per distinct user, and the result is bit-identical to the whole-file reading it replaces:

- ids are numbered 1, 2, ... in order of their first appearance in the file (as ``pd.factorize`` of the whole
  column would: a chunk's new ids are numbered in their order within the chunk, after every earlier chunk's);
- users are ordered by their first event in time, each user's events chronologically, equal timestamps in file
  order (a stable sort on the timestamp, then on the user's first-event position).

Ids are looked up by a 64-bit hash and confirmed by a second, independent one; two distinct ids that agree on
both (about 1 in 10^19 for a 30M-id file) would be caught only by chance, and two that agree on the first are
caught always and the file is read again under other hash keys.
"""
from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

log = logging.getLogger(__name__)
CHUNK_ROWS = 2_000_000  # rows of text at a time: about 0.25 GB of pandas strings
# siphash keys (16 characters each) of the lookup hash and the check hash; the next pair is tried on a collision
HASH_KEYS = (("PixelRec-ids-001", "PixelRec-chk-001"), ("PixelRec-ids-002", "PixelRec-chk-002"),
             ("PixelRec-ids-003", "PixelRec-chk-003"))


class HashCollision(Exception):
    """Two distinct ids of the file share a lookup hash; the file is read again under other keys."""


class _SortedLevels:
    """uint64 hash -> (id, check hash), as a few sorted runs merged like a binary counter: adding k entries to n
    costs O(k log n) amortised copying instead of the O(n) of inserting into one sorted array each chunk."""

    def __init__(self):
        self.levels: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ids (0 where absent) and the check hashes recorded for ``hashes``."""
        ids = np.zeros(len(hashes), dtype=np.int64)
        checks = np.zeros(len(hashes), dtype=np.uint64)
        for keys, level_ids, level_checks in self.levels:
            at = np.minimum(np.searchsorted(keys, hashes), len(keys) - 1)
            hit = keys[at] == hashes
            ids[hit], checks[hit] = level_ids[at[hit]], level_checks[at[hit]]
        return ids, checks

    def add(self, hashes: np.ndarray, ids: np.ndarray, checks: np.ndarray) -> None:
        order = np.argsort(hashes)
        self.levels.append((hashes[order], ids[order], checks[order]))
        while len(self.levels) > 1 and len(self.levels[-2][0]) <= 2 * len(self.levels[-1][0]):
            (k1, i1, c1), (k2, i2, c2) = self.levels.pop(-2), self.levels.pop()
            keys = np.concatenate([k1, k2])
            order = np.argsort(keys, kind="stable")  # two sorted runs: timsort merges them in linear time
            self.levels.append((keys[order], np.concatenate([i1, i2])[order], np.concatenate([c1, c2])[order]))


class IdMap:
    """Original string ids -> 1, 2, ... in order of first appearance, fed one chunk at a time."""

    def __init__(self, keys: tuple[str, str]):
        self.hash_key, self.check_key = keys
        self.table = _SortedLevels()
        self.count = 0
        self._encoded: list[bytes] = []
        self._lengths: list[np.ndarray] = []

    def codes(self, values: np.ndarray) -> np.ndarray:
        """int32 internal ids of a chunk's ids (object array of str), numbering the ids not seen before."""
        local, uniques = pd.factorize(values)  # uniques in order of first appearance within the chunk
        uniques = np.asarray(uniques, dtype=object)
        hashes = pd.util.hash_array(uniques, hash_key=self.hash_key, categorize=False)
        checks = pd.util.hash_array(uniques, hash_key=self.check_key, categorize=False)
        if len(np.unique(hashes)) != len(hashes):
            raise HashCollision
        ids, known_checks = self.table.lookup(hashes)
        seen = ids > 0
        if (known_checks[seen] != checks[seen]).any():
            raise HashCollision
        new = np.flatnonzero(~seen)
        ids[new] = self.count + 1 + np.arange(len(new), dtype=np.int64)
        self.count += len(new)
        if len(new):
            self.table.add(hashes[new], ids[new], checks[new])
            encoded = [t.encode("utf-8") for t in uniques[new]]  # a loop over new distinct ids, not over rows
            self._lengths.append(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
            self._encoded.append(b"".join(encoded))
        if self.count >= 2 ** 31:
            raise OverflowError("more than 2^31 distinct ids")
        return ids[local].astype(np.int32)  # 4 bytes per row until the sort

    def token_table(self):
        """The ids in internal order as a TokenTable ([PAD] first)."""
        from .interactions import TokenTable
        return TokenTable.from_utf8(b"".join(self._encoded), np.concatenate([np.zeros(0, np.int64), *self._lengths]))


def chronological_order(columns: dict, n_users: int) -> np.ndarray:
    """int64 permutation of the rows: users by their first event in time, each user's rows by time, equal times
    in file order. Takes ``columns["timestamps"]`` out of ``columns`` and reuses its memory, so that the peak stays
    at about 24 bytes per row besides the id columns."""
    timestamps = columns.pop("timestamps")
    user_ids = columns["user_ids"]
    n = len(timestamps)
    if (n_users + 1) * max(n, 1) >= 2 ** 63:  # the sort key below: about 3e9 rows with as many users
        raise OverflowError(f"{n:,} rows and {n_users:,} users do not fit one int64 sort key")
    by_time = np.argsort(timestamps, kind="stable")
    position = timestamps  # row -> its place in time order, written over the timestamps (no longer needed)
    del timestamps
    for start in range(0, n, CHUNK_ROWS):  # in blocks: one arange of n would cost 8 bytes per row more
        position[by_time[start:start + CHUNK_ROWS]] = np.arange(start, min(start + CHUNK_ROWS, n), dtype=np.int64)
    del by_time
    first = np.full(n_users + 1, n, dtype=np.int64)  # row 0 (padding) has no rows: it sorts last
    np.minimum.at(first, user_ids, position)
    user_rank = np.empty(n_users + 1, dtype=np.int64)
    user_rank[np.argsort(first)] = np.arange(n_users + 1, dtype=np.int64)  # first positions are distinct
    key = user_rank[user_ids]
    del user_rank, first
    key *= max(n, 1)
    key += position  # (user's rank, row's time position): distinct keys, so any sort gives the one order
    del position
    return np.argsort(key)


def stream_columns(path: Path, chunks, keys: tuple[str, str], show_progress: bool) -> tuple[dict, IdMap, IdMap]:
    """The whole file's columns as compact arrays (``timestamps`` int64, ``user_ids`` and ``item_ids`` int32) and
    the two id maps, from ``chunks``: checked frames of a bounded number of rows each."""
    users, items = IdMap(keys), IdMap(keys)
    times, user_parts, item_parts = [], [], []
    bar = tqdm(desc=f"reading {path.name}", unit=" rows", unit_scale=True, leave=False,
               disable=None if show_progress else True)  # None: shown on a terminal only
    frame = None
    with bar:
        for frame in chunks:
            times.append(frame["timestamp"].to_numpy(np.int64))
            user_parts.append(users.codes(frame["user_id"].to_numpy(object)))
            item_parts.append(items.codes(frame["item_id"].to_numpy(object)))
            bar.update(len(frame))
        del frame  # the last chunk's text, before the columns are joined
    columns = {"timestamps": _concatenate_consuming(times), "user_ids": _concatenate_consuming(user_parts),
               "item_ids": _concatenate_consuming(item_parts)}
    release_freed_memory()  # the chunks' arrays came from the heap: give their pages back before the sorts
    return columns, users, items


def _concatenate_consuming(parts: list[np.ndarray]) -> np.ndarray:
    """``np.concatenate(parts)``, emptying ``parts`` as it goes: each part is freed once copied, so the peak is
    the result plus one part rather than twice the column."""
    out = np.empty(sum(len(p) for p in parts), dtype=parts[0].dtype if parts else np.int64)
    offset = 0
    parts.reverse()
    while parts:
        part = parts.pop()
        out[offset:offset + len(part)] = part
        offset += len(part)
        del part
    return out


def release_freed_memory() -> None:
    """Ask glibc to return freed heap pages to the system (``malloc_trim``): arrays of a few MB come from the
    heap, and without this their pages stay resident after they are freed, counted in the process's memory until
    the heap reuses them. Nothing happens where glibc is not the allocator."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
