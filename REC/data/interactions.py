"""Interactions CSV -> id maps -> chronological per-user sequences -> leave-one-out split.

Everything is vectorised (pandas/numpy); nothing loops over interactions in Python, so a 200M-row file costs
a few sorts and gathers. Faithful to the original except that the timestamp sort is stable,
so equal timestamps keep their file order instead of an implementation-defined one.
"""
from __future__ import annotations

import codecs
import hashlib
import logging
import struct
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from ..utils.files import atomic_output, remove_stale_temporaries
from ..utils.errors import UserError
from ..utils.integrity import read_npy_header
from .streaming import CHUNK_ROWS, HASH_KEYS, HashCollision, chronological_order, stream_columns

log = logging.getLogger(__name__)
COLUMNS = ("item_id", "user_id", "timestamp")
PREP_VERSION = 1  # bump when the prepared arrays change meaning, so stale caches are not reused


class DataError(UserError, ValueError):
    """The data files do not match what PixelRec expects; the message names the file and the problem."""


@dataclass(frozen=True)
class TokenTable:
    """Original string ids, index = internal id (0 is ``[PAD]``); stored as utf-8 bytes, never pickled."""

    blob: np.ndarray     # uint8, all tokens concatenated
    offsets: np.ndarray  # int64 [n + 1]

    @classmethod
    def from_strings(cls, tokens) -> "TokenTable":
        encoded = [t.encode("utf-8") for t in tokens]
        return cls.from_utf8(b"".join(encoded), np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))

    @classmethod
    def from_utf8(cls, blob: bytes, lengths) -> "TokenTable":
        """The tokens whose UTF-8 bytes are ``blob`` concatenated, ``lengths`` bytes each, after ``[PAD]``."""
        pad = "[PAD]".encode("utf-8")
        lengths = np.concatenate([[len(pad)], np.asarray(lengths, dtype=np.int64)]).astype(np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(np.frombuffer(pad + blob, dtype=np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def digest(self) -> str:
        """sha256 of the tokens in order: the identity of an id map (a file made for one run's item order
        must not be read with another's)."""
        return hashlib.sha256(self.blob.tobytes() + self.offsets.tobytes()).hexdigest()

    def __getitem__(self, idx: int) -> str:
        return self.blob[self.offsets[idx]:self.offsets[idx + 1]].tobytes().decode("utf-8")

    def to_list(self) -> list[str]:
        data = self.blob.tobytes()
        return [data[a:b].decode("utf-8") for a, b in zip(self.offsets[:-1], self.offsets[1:])]


@dataclass(frozen=True)
class Interactions:
    """Every user's chronological item sequence, users in order of their first event.

    ``items[indptr[k]:indptr[k+1]]`` is the sequence of ``users[k]``. Internal ids start at 1; 0 is padding.
    """

    users: np.ndarray    # int64 [U] internal user id of each sequence
    indptr: np.ndarray   # int64 [U + 1]
    items: np.ndarray    # int64 [n_interactions]
    user_tokens: TokenTable
    item_tokens: TokenTable
    csv_digest: str = ""  # content hash of the CSV these came from (a run records it to notice a changed file)

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


def read_interactions(path: Path, chunk_rows: int = CHUNK_ROWS, show_progress: bool = True) -> Interactions:
    """Parse the CSV ``chunk_rows`` at a time, number ids in order of first appearance and group chronologically
    by user (``streaming.py`` says how, and why the result equals reading the file whole)."""
    for keys in HASH_KEYS:
        try:
            columns, users, items = stream_columns(path, read_chunks(path, chunk_rows), keys, show_progress)
            break
        except HashCollision:
            log.warning("%s: two ids share a hash under key %s; reading the file again under another", path, keys[0])
    else:
        raise DataError(f"{path}: ids collide under every hash key tried; please report this file")
    order = chronological_order(columns, users.count)
    seq_users = columns.pop("user_ids")[order]
    starts = np.flatnonzero(np.r_[True, seq_users[1:] != seq_users[:-1]])
    indptr = np.append(starts, len(order)).astype(np.int64)
    user_of_sequence = seq_users[starts].astype(np.int64)
    del seq_users
    sequence_items = columns.pop("item_ids")[order].astype(np.int64)
    return Interactions(users=user_of_sequence, indptr=indptr, items=sequence_items,
                        user_tokens=users.token_table(), item_tokens=items.token_table())


# Ids are taken verbatim: pandas would read NA, null, nan, None, N/A, ... as missing values, and those are real ids.
# Only an empty field is missing.
_VERBATIM = dict(keep_default_na=False, na_values=[""])


def read_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The CSV's item_id and user_id (strings) and timestamp (int64) columns, ``chunk_rows`` rows at a time;
    every problem a DataError naming the file (and the line, counted from the file's start)."""
    try:
        header = pd.read_csv(path, nrows=0, encoding="utf-8").columns.tolist()
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; expected a CSV with the header {','.join(COLUMNS)}") from None
    except UnicodeDecodeError:
        raise not_utf8_error(path) from None
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: header is {header}; expected the columns {list(COLUMNS)} (missing {missing})")
    reader = pd.read_csv(path, usecols=list(COLUMNS), engine="c", encoding="utf-8", **_VERBATIM,
                         dtype={"item_id": str, "user_id": str, "timestamp": np.int64}, chunksize=chunk_rows)
    first_line = 2  # the header is line 1
    with reader:
        while True:
            try:
                frame = next(reader)
            except StopIteration:
                break
            except UnicodeDecodeError:
                raise not_utf8_error(path) from None
            except (ValueError, TypeError, OverflowError):
                raise _bad_timestamps(path, chunk_rows) from None
            empty = frame[["item_id", "user_id"]].isna().any(axis=1).to_numpy()
            if empty.any():
                bad = empty.nonzero()[0][:5] + first_line
                raise DataError(f"{path}: empty item_id or user_id on lines {bad.tolist()} (first few); every row "
                                f"needs all of {list(COLUMNS)}")
            first_line += len(frame)
            yield frame
    if first_line == 2:
        raise DataError(f"{path}: no interactions (only a header)")


def not_utf8_error(csv_file: Path, block: int = 1 << 20) -> DataError:
    """Slow path, only after pandas refused the file: where its first byte that is not UTF-8 is (pandas' own error
    counts from the start of an internal buffer, not of the file), for a one-line message."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    where, offset, newlines = "", 0, 0
    with open(csv_file, "rb") as f:
        while True:
            data = f.read(block)
            pending = len(decoder.getstate()[0])  # bytes of a character cut at the previous block's end
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                bad = offset - pending + exc.start
                line = newlines + data[:max(bad - offset, 0)].count(b"\n") + 1
                where = f" (byte 0x{exc.object[exc.start]:02x} at offset {bad}, line {line})"
                break
            if not data:
                break
            offset += len(data)
            newlines += data.count(b"\n")
    return DataError(f"{csv_file}: not UTF-8 text{where}; save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)")


def _bad_timestamps(path: Path, chunk_rows: int = CHUNK_ROWS) -> DataError:
    """Slow path, only on error: find the first line whose timestamp is not an integer that fits int64, and count
    such lines, reading the column as text ``chunk_rows`` at a time (the whole column as text would cost GBs)."""
    first, count, line = None, 0, 2
    for ts in pd.read_csv(path, usecols=["timestamp"], dtype=str, engine="c", keep_default_na=False,
                          chunksize=chunk_rows):
        ts = ts["timestamp"]
        text = ts.str.strip()
        integer = text.str.fullmatch(r"[+-]?\d+").fillna(False).to_numpy(bool).copy()
        long = integer & (text.str.lstrip("+-").str.lstrip("0").str.len() >= 19).to_numpy(bool)
        for i in np.flatnonzero(long):  # few rows: only 19+ digit numbers can fall outside int64
            integer[i] = np.iinfo(np.int64).min <= int(text.iloc[i]) <= np.iinfo(np.int64).max
        bad = np.flatnonzero(~integer)
        if len(bad) and first is None:
            first = (ts.iloc[bad[0]], line + bad[0])
        count, line = count + len(bad), line + len(ts)
    if first is None:  # pandas refused the column for a reason not seen above
        return DataError(f"{path}: cannot read the timestamp column; expected integer timestamps")
    return DataError(f"{path}: timestamp {first[0]!r} on line {first[1]} ({count} such lines) is not "
                     f"an integer in the int64 range; expected integer timestamps (e.g. Unix seconds)")


# ----------------------------------------------------------------------------------------------- cache
def _save_npz_atomic(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, "wb") as f:
        np.savez(f, **arrays)


def prepared_data_dir(data_path: str, dataset: str, cache_dir: str | None = None) -> Path:
    """Where prepared data is cached: ``cache_dir``, else ``.pixelrec_cache`` beside the dataset's CSV."""
    return Path(cache_dir) if cache_dir else csv_path(data_path, dataset).parent / ".pixelrec_cache"


def load_interactions(data_path: str, dataset: str, cache_dir: str | None = None) -> Interactions:
    """Prepared interactions, read from a cache keyed by the CSV's content (a second run skips parsing).
    A cache file that cannot be read (truncated, overwritten) is rebuilt with a warning, never trusted."""
    path = csv_path(data_path, dataset)
    digest = file_digest(path)
    cache = prepared_data_dir(data_path, dataset, cache_dir) / f"{dataset}-{digest}-v{PREP_VERSION}.npz"
    if cache.is_file():
        try:
            return _read_cache(cache, digest)
        except Exception as exc:  # zipfile, numpy and OS errors alike: the cache is only ever a copy
            log.warning("data cache %s is unreadable (%s: %s); rebuilding it from %s", cache,
                        type(exc).__name__, exc, path)
    inter = replace(read_interactions(path), csv_digest=digest)
    try:
        for stale in remove_stale_temporaries(cache):
            log.warning("removed %s, a data cache left half-written by a killed preparation", stale)
        _save_npz_atomic(cache, dict(users=inter.users, indptr=inter.indptr, items=inter.items,
                                     user_blob=inter.user_tokens.blob, user_offsets=inter.user_tokens.offsets,
                                     item_blob=inter.item_tokens.blob, item_offsets=inter.item_tokens.offsets))
    except OSError as exc:  # a read-only data folder must not stop a run; it only costs the next one time
        log.warning("could not write the data cache %s (%s); set cache_dir to a writable folder", cache, exc)
    return inter


def _read_cache(cache: Path, digest: str) -> Interactions:
    """The cache's arrays memory-mapped, not copied: every process of a node that reads one cache shares its pages
    (the page cache holds them once), so DDP ranks hold one copy of the interactions between them. Each member's
    CRC-32 is checked first, as reading it through zip would (a read of the whole file, shared too)."""
    z = _mapped_npz(cache)
    inter = Interactions(users=z["users"], indptr=z["indptr"], items=z["items"],
                         user_tokens=TokenTable(z["user_blob"], z["user_offsets"]),
                         item_tokens=TokenTable(z["item_blob"], z["item_offsets"]), csv_digest=digest)
    n_users, n_items = len(inter.user_tokens), len(inter.item_tokens)
    consistent = (inter.indptr[0] == 0 and inter.indptr[-1] == len(inter.items)
                  and len(inter.users) + 1 == len(inter.indptr)
                  and inter.user_tokens.offsets[-1] == len(inter.user_tokens.blob)
                  and inter.item_tokens.offsets[-1] == len(inter.item_tokens.blob)
                  and (len(inter.items) == 0 or 0 < inter.items.min() and inter.items.max() < n_items)
                  and (len(inter.users) == 0 or 0 < inter.users.min() and inter.users.max() < n_users))
    if not consistent:
        raise ValueError("its arrays do not fit together")
    return inter


def _mapped_npz(path: Path) -> dict[str, np.ndarray]:
    """Read-only memory maps of the members of an uncompressed .npz (``np.savez``), each checked against the CRC-32
    its zip entry records; any damage or an unexpected layout raises."""
    arrays = {}
    with open(path, "rb") as f, zipfile.ZipFile(f) as archive:  # one handle: the file checked is the file mapped
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                raise ValueError(f"member {info.filename} is not a stored .npy")
            f.seek(info.header_offset)
            local = f.read(30)
            if local[:4] != b"PK\x03\x04":
                raise ValueError(f"member {info.filename}: no local file header")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            crc, left = 0, info.compress_size
            f.seek(start)
            while left > 0:
                block = f.read(min(left, 1 << 24))
                if not block:
                    raise ValueError(f"member {info.filename} is cut short")
                crc, left = zlib.crc32(block, crc), left - len(block)
            if crc != info.CRC:
                raise ValueError(f"member {info.filename}: CRC-32 mismatch")
            f.seek(start)
            shape, fortran, dtype = read_npy_header(f)
            if fortran or dtype.hasobject:
                raise ValueError(f"member {info.filename}: unexpected array layout")
            offset = f.tell()
            if offset - start + int(np.prod(shape)) * dtype.itemsize != info.compress_size:
                raise ValueError(f"member {info.filename}: its header does not match its size")
            name = info.filename[:-len(".npy")]
            arrays[name] = (np.zeros(shape, dtype) if int(np.prod(shape)) == 0 else
                            np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape).view(np.ndarray))
    return arrays

