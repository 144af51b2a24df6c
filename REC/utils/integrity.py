"""Checksums of stored arrays: what makes a complete file on disk trustworthy after it was written.

A store that was complete when written can be damaged afterwards (a disk error, a bad copy onto a shared disk, a
tool that rewrote part of it). Reading it anyway gives silently wrong results (two rows swapped: other metrics,
no error) or a traceback that blames something else (a NaN loss, numpy's "pickled data" or mmap errors). So every
per-item array this project writes records, when each chunk of its rows is written, a CRC-32 of that chunk's bytes,
and a reader checks the file's layout (``npy_layout``) at open and each chunk's checksum before trusting it.

CRC-32 (zlib) is used because it is fast (several GB/s, far below the cost of reading the rows) and detects the
accidental damage above; it is not a defence against deliberate tampering.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
from .errors import UserError

ALGORITHM = "crc32"
CHUNK_BYTES = 64 << 20  # whole-file checksums: one per 64 MiB, so a reader can check a part without the rest


class DamagedFileError(UserError, ValueError):
    """A stored array is not what was written: ``path``, the ``chunk`` that differs (None: the layout) and why."""

    def __init__(self, path: Path, why: str, chunk: int | None = None):
        self.path, self.why, self.chunk = Path(path), why, chunk
        super().__init__(f"{path}: {why}")


def crc32(data) -> int:
    """CRC-32 of a bytes-like object (a contiguous numpy array is read in place, not copied)."""
    return zlib.crc32(memoryview(data).cast("B")) & 0xFFFFFFFF


def read_npy_header(f) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran order, dtype) of the .npy header at ``f``'s position, leaving ``f`` at the data; a
    ValueError for a format version this project does not write (1.0 and 2.0 are what numpy writes here)."""
    version = np.lib.format.read_magic(f)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f"npy format version {version}")
    return read(f)


def npy_layout(path: str | Path, shape: tuple[int, ...] | None = None, dtype=None,
               fortran_ok: bool = False) -> tuple[int, tuple, np.dtype]:
    """(data offset, shape, dtype) of the ``.npy`` file ``path``, read from its header only; DamagedFileError
    unless the header is a plain numeric C-order array of the expected ``shape`` and ``dtype`` (None: any) and the
    file holds exactly its rows (a truncated or extended file is refused here, before any map)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            got_shape, fortran, got_dtype = read_npy_header(f)
            offset = f.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise DamagedFileError(path, f"its .npy header cannot be read ({exc})") from None
    if got_dtype.hasobject or (fortran and not fortran_ok):
        raise DamagedFileError(path, f"its header says {'Fortran order' if fortran else 'object data'}, which this "
                                     f"project never writes")
    if shape is not None and tuple(got_shape) != tuple(shape):
        raise DamagedFileError(path, f"its header says shape {list(got_shape)}, expected {list(shape)}")
    if dtype is not None and got_dtype != np.dtype(dtype):
        raise DamagedFileError(path, f"its header says dtype {got_dtype}, expected {np.dtype(dtype)}")
    expected = offset + int(np.prod(got_shape, dtype=np.int64)) * got_dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        raise DamagedFileError(path, f"it holds {size:,} bytes and its header says {expected:,} "
                                     f"({'truncated' if size < expected else 'bytes after its rows'})")
    return offset, tuple(got_shape), got_dtype


def file_checksums(path: str | Path, offset: int, chunk_bytes: int = CHUNK_BYTES) -> list[int]:
    """CRC-32 of each ``chunk_bytes`` of ``path`` after ``offset`` (the last chunk may be shorter)."""
    sums = []
    with open(path, "rb") as f:
        f.seek(offset)
        while True:
            block = f.read(chunk_bytes)
            if not block:
                return sums
            sums.append(crc32(block))


def checksum_record(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> dict:
    """The whole-file checksum record of the earlier feature-file and item-table formats (``verify_file`` still
    reads it for files written then; this project now writes per-chunk CRC-32s, ``REC.data.item_array``): the
    CRC-32s of the rows' bytes of the ``.npy`` file ``path``, after its header."""
    offset = npy_layout(path, fortran_ok=True)[0]
    return {"algorithm": ALGORITHM, "offset": int(offset), "chunk_bytes": int(chunk_bytes),
            "sums": file_checksums(path, offset, chunk_bytes)}


def verify_file(path: str | Path, record: dict, what_to_do: str) -> None:
    """DamagedFileError naming the first chunk of ``path`` whose CRC differs from ``record``
    (``checksum_record``), and ``what_to_do``."""
    fields = {"offset": int, "chunk_bytes": int, "sums": list}
    if not isinstance(record, dict) or record.get("algorithm") != ALGORITHM or any(
            not isinstance(record.get(k), t) for k, t in fields.items()) or record["chunk_bytes"] <= 0:
        raise DamagedFileError(path, f"its checksum record is missing, incomplete or unreadable; {what_to_do}")
    got = file_checksums(path, record["offset"], record["chunk_bytes"])
    for c, (a, b) in enumerate(zip(got, record["sums"])):
        if a != b:
            start = record["offset"] + c * record["chunk_bytes"]
            raise DamagedFileError(path, f"bytes {start:,}..{start + record['chunk_bytes'] - 1:,} (chunk {c}) are not "
                                         f"the ones written (CRC-32 {a:08x}, recorded {b:08x}); {what_to_do}", c)
    if len(got) != len(record["sums"]):
        raise DamagedFileError(path, f"{len(got)} chunks on disk, {len(record['sums'])} recorded; {what_to_do}")


def folder_is_writable(folder: str | Path) -> bool:
    """Whether this process may create files in ``folder`` (where a damaged artifact could be rebuilt)."""
    return os.access(folder, os.W_OK | os.X_OK)
