"""Interactions CSV -> id maps -> chronological per-user sequences -> leave-one-out split.

Everything is vectorised (pandas/numpy); nothing loops over interactions in Python, so a 200M-row file costs
a few sorts and gathers. Faithful to the original (spec 3.1-3.2) except that the timestamp sort is stable,
so equal timestamps keep their file order instead of an implementation-defined one.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)
COLUMNS = ("item_id", "user_id", "timestamp")
PREP_VERSION = 1  # bump when the prepared arrays change meaning, so stale caches are not reused


class DataError(ValueError):
    """The data files do not match what PixelRec expects; the message names the file and the problem."""


@dataclass(frozen=True)
class TokenTable:
    """Original string ids, index = internal id (0 is ``[PAD]``); stored as utf-8 bytes, never pickled."""

    blob: np.ndarray     # uint8, all tokens concatenated
    offsets: np.ndarray  # int64 [n + 1]

    @classmethod
    def from_strings(cls, tokens) -> "TokenTable":
        encoded = [t.encode("utf-8") for t in ["[PAD]", *tokens]]
        lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        return cls(blob, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, idx: int) -> str:
        return self.blob[self.offsets[idx]:self.offsets[idx + 1]].tobytes().decode("utf-8")

    def to_list(self) -> list[str]:
        data = self.blob.tobytes()
        return [data[a:b].decode("utf-8") for a, b in zip(self.offsets[:-1], self.offsets[1:])]


@dataclass(frozen=True)
class Interactions:
    """Every user's chronological item sequence, users in order of their first event (spec 3.2).

    ``items[indptr[k]:indptr[k+1]]`` is the sequence of ``users[k]``. Internal ids start at 1; 0 is padding.
    """

    users: np.ndarray    # int64 [U] internal user id of each sequence
    indptr: np.ndarray   # int64 [U + 1]
    items: np.ndarray    # int64 [n_interactions]
    user_tokens: TokenTable
    item_tokens: TokenTable

    @property
    def user_num(self) -> int:  # distinct users + 1 (row 0 is padding), as the original's user_num
        return len(self.user_tokens)

    @property
    def item_num(self) -> int:
        return len(self.item_tokens)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def summary(self, name: str) -> str:
        n_inter, n_users, n_items = len(self.items), self.user_num - 1, self.item_num - 1
        density = n_inter / max(n_users * n_items, 1)
        return (f"{name}: {n_users:,} users, {n_items:,} items, {n_inter:,} interactions, "
                f"{n_inter / max(n_users, 1):.2f} per user, {n_inter / max(n_items, 1):.2f} per item, "
                f"density {density:.6f}")


def csv_path(data_path: str, dataset: str) -> Path:
    path = Path(data_path) / f"{dataset}.csv"
    if not path.is_file():
        raise DataError(f"interactions file {str(path)!r} (from data_path={data_path!r}, dataset={dataset!r}) "
                        f"does not exist; expected a CSV with header {','.join(COLUMNS)}")
    return path


def file_digest(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_interactions(path: Path) -> Interactions:
    """Parse the CSV, factorise ids in file order (spec 3.1) and group chronologically by user (spec 3.2)."""
    header = pd.read_csv(path, nrows=0).columns.tolist()
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: header is {header}; expected the columns {list(COLUMNS)} (missing {missing})")
    try:
        frame = pd.read_csv(path, usecols=list(COLUMNS), engine="c",
                            dtype={"item_id": str, "user_id": str, "timestamp": np.int64})
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: cannot read {list(COLUMNS)}: {exc}; expected integer timestamps") from None
    if frame.isna().any().any():
        bad = frame.isna().any(axis=1).to_numpy().nonzero()[0][:5] + 2
        raise DataError(f"{path}: empty values on lines {bad.tolist()} (first few); every row needs all of {list(COLUMNS)}")
    if len(frame) == 0:
        raise DataError(f"{path}: no interactions")

    user_codes, user_uniques = pd.factorize(frame["user_id"])
    item_codes, item_uniques = pd.factorize(frame["item_id"])
    timestamps = frame["timestamp"].to_numpy()
    del frame
    user_ids = user_codes.astype(np.int64) + 1
    item_ids = item_codes.astype(np.int64) + 1

    by_time = np.argsort(timestamps, kind="stable")
    user_sorted = user_ids[by_time]
    # Users are ordered by their first event in time; a stable sort on that rank keeps each user chronological.
    first_seen = np.full(len(user_uniques) + 1, len(user_sorted), dtype=np.int64)
    np.minimum.at(first_seen, user_sorted, np.arange(len(user_sorted)))
    order = by_time[np.argsort(first_seen[user_sorted], kind="stable")]

    seq_users = user_ids[order]
    starts = np.flatnonzero(np.r_[True, seq_users[1:] != seq_users[:-1]])
    indptr = np.append(starts, len(order)).astype(np.int64)
    return Interactions(users=seq_users[starts], indptr=indptr, items=item_ids[order],
                        user_tokens=TokenTable.from_strings(user_uniques.astype(str)),
                        item_tokens=TokenTable.from_strings(item_uniques.astype(str)))


# ----------------------------------------------------------------------------------------------- cache
def _save_npz_atomic(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def load_interactions(data_path: str, dataset: str, cache_dir: str | None = None) -> Interactions:
    """Prepared interactions, read from a cache keyed by the CSV's content (a second run skips parsing)."""
    path = csv_path(data_path, dataset)
    cache_root = Path(cache_dir) if cache_dir else path.parent / ".pixelrec_cache"
    cache = cache_root / f"{dataset}-{file_digest(path)}-v{PREP_VERSION}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            return Interactions(users=z["users"], indptr=z["indptr"], items=z["items"],
                                user_tokens=TokenTable(z["user_blob"], z["user_offsets"]),
                                item_tokens=TokenTable(z["item_blob"], z["item_offsets"]))
    inter = read_interactions(path)
    try:
        _save_npz_atomic(cache, dict(users=inter.users, indptr=inter.indptr, items=inter.items,
                                     user_blob=inter.user_tokens.blob, user_offsets=inter.user_tokens.offsets,
                                     item_blob=inter.item_tokens.blob, item_offsets=inter.item_tokens.offsets))
    except OSError as exc:  # a read-only data folder must not stop a run; it only costs the next one time
        log.warning("could not write the data cache %s (%s); set cache_dir to a writable folder", cache, exc)
    return inter
