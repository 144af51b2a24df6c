"""The frozen-prefix store: every item's output of an image encoder's frozen front, memory-mapped on disk.

PixelNet freezes the first blocks of its encoder (CLIP ViT-B/32 trains only the last 2 of 12), yet encoding a
cover runs them at every step of every epoch and again at every evaluation, for an output that never changes.
This file holds that output once per item; training and evaluation read rows from it and run only the
trainable rest (``REC.model.encoders.ItemEncoder.from_prefix``).

Files, in ``encoder_cache_dir`` (default: beside the prepared data), named by a key over everything that changes
the rows (``describe``: encoder, the frozen weights' hash, cover size and normalisation, where the cut falls,
dtype, the covers database, the run's item ids, library versions):

- ``prefix-<dataset>-<key>.npy``: ``[item_num, *shape]`` float32, or uint16 holding bfloat16 bits (numpy has no
  bfloat16); row i is item i, row 0 (padding) stays zero;
- ``prefix-<dataset>-<key>.done``: one byte per chunk of ``chunk`` items, 1 once its rows are on disk, so a
  killed build resumes where it stopped;
- ``prefix-<dataset>-<key>.sums``: a CRC-32 per chunk (uint32), of the rows as written, before the chunk's done mark;
- ``prefix-<dataset>-<key>.json``: the description, shape, dtype, chunk, ``complete`` and, once complete, the
  chunks' CRC-32s (``crc32``).

A complete store is trusted only as far as it is checked: its header and size at open (``REC.utils.integrity``),
then each chunk's CRC-32, once per process before the chunk's rows are used (``verify``; the launcher checks every
chunk once, sharded over the ranks, before training: ``REC.encoder_cache``). Opening a complete store takes no
lock and writes nothing, so a store prepared once can be shared from a read-only folder.

A store is built in ``prefix-<dataset>-<key>.npy.part`` and renamed over the ``.npy`` (``os.replace``) once every
chunk is on disk, so a reader only ever maps a complete file, and a rebuild never writes into a file that another
run has mapped: that run keeps reading the old file (its inode) until it closes it. The rows of a build in progress
are written with ``pwrite`` into space reserved at creation (``posix_fallocate``), never through a memory map, so
a disk that fills up during the build is an error naming ``encoder_cache_dir``, not a SIGBUS. One process builds
a store at a time: rank 0 of the building run holds the ``.lock`` file until the store is complete (a killed
build's lock goes with its process), and a run that wants the same store meanwhile waits for it.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from ..utils.files import write_text_atomic
from ..utils.integrity import DamagedFileError, crc32, npy_layout
from .interactions import DataError
from ..utils.batch_keys import COVER_PREFIX

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: per-chunk CRC-32s; a version-1 store (none) gets a new key and is rebuilt
NO_ROOM = (errno.ENOSPC, errno.EDQUOT)  # a full disk, or the user's quota on it
DTYPES = {"float32": (np.float32, torch.float32), "bfloat16": (np.uint16, torch.bfloat16)}


class PrefixCacheError(DataError):
    """The store cannot be made (no room on its disk) or is not the one its description names."""


def cache_key(describe: dict) -> str:
    text = json.dumps({"format": FORMAT_VERSION, **describe}, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    raise AssertionError


def files_digest(path: Path) -> str:
    """Identity of a covers database without reading it: its files' names, sizes and modification times
    (generate_lmdb.py rewrites them, so regenerated covers get a new store)."""
    parts = []
    for f in sorted(path.iterdir()) if path.is_dir() else [path]:
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.blake2b("|".join(parts).encode(), digest_size=8).hexdigest()


class PrefixCache:
    """One store (see the module docstring). Rank 0 ``create``s it; every rank ``write``s the chunks it is given;
    readers (training loader workers, evaluation) call ``rows``. Picklable: each process maps the file itself.

    ``chunk`` (the run's ``cover_batch_size``) is how many items a done mark covers in a NEW store; a store found on
    disk keeps its own (``create`` adopts it), since it only says how the build was split, not what the rows are."""

    batch_key = COVER_PREFIX

    def __init__(self, folder: Path, dataset: str, describe: dict, item_num: int, shape: tuple[int, ...],
                 dtype: str, chunk: int):
        if dtype not in DTYPES:
            raise ValueError(f"prefix cache dtype {dtype!r} is not one of {sorted(DTYPES)}")
        self.describe, self.key = describe, cache_key(describe)
        self.item_num, self.shape, self.dtype, self.chunk = int(item_num), tuple(int(s) for s in shape), dtype, int(chunk)
        base = Path(folder) / f"prefix-{dataset}-{self.key}"
        self.path, self.done_path, self.meta_path, self.sums_path = (
            base.with_suffix(s) for s in (".npy", ".done", ".json", ".sums"))
        self.part_path = base.with_suffix(".npy.part")  # the file being built; renamed to ``path`` when complete
        self._new_chunk = self.chunk
        self._rows = self._lock = self._offset = None
        self.sums: list[int] | None = None  # each chunk's CRC-32, from the description of a complete store
        self.verified: np.ndarray | None = None  # bool [n_chunks]: checked in this process (or before its fork)
        self._all_verified = False

    # ------------------------------------------------------------------------------------------- size
    @property
    def itemsize(self) -> int:
        return np.dtype(DTYPES[self.dtype][0]).itemsize

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape)) * self.itemsize

    @property
    def nbytes(self) -> int:
        return self.row_bytes * self.item_num

    @property
    def n_chunks(self) -> int:
        return -(-(self.item_num - 1) // self.chunk)

    def chunk_items(self, c: int) -> np.ndarray:
        return np.arange(1 + c * self.chunk, min(self.item_num, 1 + (c + 1) * self.chunk), dtype=np.int64)

    def check_room(self) -> None:
        """PrefixCacheError when the disk of the store's folder (or of its nearest existing parent, before the
        folder is made) has less free space than the rows need."""
        free = self._free()
        if free < self.nbytes:
            raise PrefixCacheError(self._no_room_message(free))

    def _free(self) -> int:
        folder = self.path.parent
        while not folder.exists():
            folder = folder.parent
        return shutil.disk_usage(folder).free

    def _no_room_message(self, free: int, during: str = "") -> str:
        return (f"the encoder's frozen-prefix store {during}needs {human_bytes(self.nbytes)} ({self.item_num - 1} "
                f"items x {' x '.join(map(str, self.shape))} x {self.itemsize} bytes) and "
                f"{self.path.parent} has {human_bytes(free)} free; set key 'encoder_cache_dir' to a folder on a "
                f"larger disk, or encoder_cache: off to encode every cover at every step instead")

    @contextlib.contextmanager
    def _full_disk_is_an_error(self, during: str):
        """ENOSPC / EDQUOT inside the block -> the one-line PrefixCacheError of ``check_room``, said ``during``
        (space that others took after the check at creation)."""
        try:
            yield
        except OSError as exc:
            if exc.errno not in NO_ROOM:
                raise
            raise PrefixCacheError(self._no_room_message(self._free(), during)) from None

    # ------------------------------------------------------------------------------------------- state
    @staticmethod
    def read_json(path: Path) -> dict | None:
        try:
            meta = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def read_meta(self) -> dict | None:
        return self.read_json(self.meta_path)

    @property
    def complete(self) -> bool:
        return self.sound_complete()[0]

    def _meta_matches(self, meta: dict | None) -> bool:
        return (meta is not None and meta.get("key") == self.key and meta.get("shape") == list(self.shape)
                and meta.get("dtype") == self.dtype and meta.get("item_num") == self.item_num)

    def sound_complete(self) -> tuple[bool, str]:
        """(True, "") when a complete store of this key is on disk with a sound layout: its description, the
        header and size of its ``.npy``, a CRC-32 per chunk; else (False, why not). Reads; writes nothing."""
        meta = self.read_meta()
        if not self._meta_matches(meta) or not meta.get("complete"):
            return False, "no complete store" if not self.meta_path.exists() else "not complete"
        chunk = int(meta["chunk"])
        sums = meta.get("crc32")
        if not isinstance(sums, list) or len(sums) != -(-(self.item_num - 1) // chunk):
            return False, f"{self.meta_path} records no checksum per chunk"
        try:
            npy_layout(self.path, (self.item_num, *self.shape), DTYPES[self.dtype][0])
        except DamagedFileError as exc:
            return False, str(exc)
        self.chunk, self.sums = chunk, [int(x) for x in sums]
        return True, ""

    def pending(self) -> list[int]:
        done = np.fromfile(self.done_path, dtype=np.uint8) if self.done_path.is_file() else np.zeros(0, np.uint8)
        if len(done) != self.n_chunks:
            return list(range(self.n_chunks))
        return np.flatnonzero(done == 0).tolist()

    def create(self) -> str:
        """Find the store or start building it; returns what was found: 'complete', 'partial' (a killed build,
        resumed) or 'new'. Unless 'complete', this process then holds the store's lock until ``finish`` or
        ``release``: another run that wants the same store waits here meanwhile, so two builds never write one
        file. Refuses when the disk cannot hold the rows.

        A sound complete store is found without the lock and without writing (a read-only folder serves it);
        only a build takes the lock."""
        sound, why = self.sound_complete()
        if sound:
            return "complete"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(self.path.with_suffix(".lock"), "w")
        except OSError as exc:
            if self.meta_path.exists() or self.path.exists():
                raise PrefixCacheError(f"the encoder's frozen-prefix store {self.path} cannot be used ({why}) and "
                                       f"cannot be rebuilt there ({exc.strerror}); rebuild it where it can be "
                                       f"written (key 'encoder_cache_dir'), or set encoder_cache: off") from None
            raise PrefixCacheError(f"the encoder's frozen-prefix store cannot be built in {self.path.parent} "
                                   f"({exc.strerror}); set key 'encoder_cache_dir' to a writable folder, or "
                                   f"encoder_cache: off") from None
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("encoder_cache: another process is building %s; waiting for it", self.path)
                fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._create()
        except BaseException:
            lock.close()
            raise
        if state == "complete":
            lock.close()
        else:
            self._lock = lock
        return state

    def release(self) -> None:
        """Let another process build (or resume) the store; ``finish`` releases too."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _create(self) -> str:
        sound, why = self.sound_complete()
        if sound:  # built by the run we waited for
            return "complete"
        meta = self.read_meta()
        if self._meta_matches(meta) and meta.get("complete"):
            log.warning("encoder_cache: %s; rebuilding the store", why)
        if self._meta_matches(meta) and not meta.get("complete"):
            self.chunk = int(meta["chunk"])  # the store's split into done marks, not this run's cover_batch_size
            done = self.done_path.stat().st_size if self.done_path.is_file() else -1
            sums = self.sums_path.stat().st_size if self.sums_path.is_file() else -1
            if self._holds_rows(self.part_path) and done == self.n_chunks and sums == 4 * self.n_chunks:
                return "partial"
        # A new build, in a new file beside the current one (if any): a run that maps that one keeps reading it.
        # An earlier .part is an abandoned build's: no reader opens it, and no writer is left (we hold the lock).
        self.chunk = self._new_chunk
        self.part_path.unlink(missing_ok=True)
        self.check_room()
        try:
            with self._full_disk_is_an_error("could not reserve its room: it "):
                rows = np.lib.format.open_memmap(self.part_path, mode="w+", dtype=DTYPES[self.dtype][0],
                                                 shape=(self.item_num, *self.shape))
                self._offset, size = rows.offset, rows.offset + rows.nbytes
                del rows  # sparse so far; never written through a map (see the module docstring)
                with open(self.part_path, "r+b") as f:
                    try:
                        os.posix_fallocate(f.fileno(), 0, size)  # the disk's blocks, reserved now; row 0 reads 0
                    except OSError as exc:
                        if exc.errno in NO_ROOM:
                            raise
                        # EOPNOTSUPP / EINVAL: a filesystem that cannot reserve; a full disk is then an error at
                        # the write that meets it (``write``)
                np.zeros(self.n_chunks, np.uint32).tofile(self.sums_path)
                np.zeros(self.n_chunks, np.uint8).tofile(self.done_path)
                self._write_meta(complete=False)
        except BaseException:
            self.part_path.unlink(missing_ok=True)  # nothing half-made stays behind
            raise
        return "new"

    def _holds_rows(self, path: Path) -> bool:
        return path.is_file() and path.stat().st_size >= self.nbytes

    def _data_offset(self) -> int:
        """Where row 0 starts in the .npy file (after numpy's header)."""
        if self._offset is None:
            header = np.load(self.part_path, mmap_mode="r")  # a read-only map of the header's file: never a SIGBUS
            self._offset = header.offset
            del header
        return self._offset

    def write(self, c: int, rows: torch.Tensor) -> None:
        """Rows of chunk ``c`` (``chunk_items(c)`` in order), on disk before the chunk is marked done."""
        items = self.chunk_items(c)  # consecutive ids
        data = np.ascontiguousarray(self._to_numpy(rows))
        if data.shape != (len(items), *self.shape):
            raise ValueError(f"chunk {c} of {self.path.name}: rows of shape {list(data.shape)}, expected "
                             f"{[len(items), *self.shape]}")
        pos = self._data_offset() + int(items[0]) * self.row_bytes
        left = memoryview(data.reshape(-1).view(np.uint8))
        checksum = np.array([crc32(left)], dtype=np.uint32).tobytes()
        with self._full_disk_is_an_error("ran out of room while being built: it "):
            fd = os.open(self.part_path, os.O_WRONLY)
            try:
                while left:
                    n = os.pwrite(fd, left, pos)
                    left, pos = left[n:], pos + n
                os.fsync(fd)
            finally:
                os.close(fd)
            for path, at, mark in ((self.sums_path, 4 * c, checksum), (self.done_path, c, b"\x01")):
                with open(path, "r+b") as f:  # the checksum is on disk before the chunk counts as done
                    f.seek(at)
                    f.write(mark)
                    f.flush()
                    os.fsync(f.fileno())

    def finish(self) -> None:
        """Once every chunk is written: the built file replaces the store's ``.npy`` in one rename, then the
        description says complete, and the lock is released."""
        try:
            left = self.pending()
            if left:
                raise PrefixCacheError(f"{self.part_path}: chunks {left[:10]} of {self.n_chunks} were never written")
            if self.part_path.is_file():  # else finished already: a second call changes nothing
                sums = np.fromfile(self.sums_path, dtype=np.uint32).tolist()
                with self._full_disk_is_an_error("ran out of room while being completed: it "):
                    os.replace(self.part_path, self.path)  # a reader of the old file keeps its inode
                    self._write_meta(complete=True, sums=sums)
                self._rows = None  # a map of the store's previous file, if any, is not this one
                self.sums = sums
        finally:
            self.release()

    def invalidate(self) -> None:
        """Mark a complete store as not complete (its rows failed their checksums), so the next ``create``
        builds it anew; the damaged file stays until the new one replaces it (a reader keeps its inode)."""
        self._write_meta(complete=False)
        self.close()

    def close(self) -> None:
        """Forget the map and the checks: the next read maps the file now at ``path`` (after a rebuild, the new
        one; a kept map would go on reading the old file's inode)."""
        self._rows = self.sums = self.verified = None
        self._all_verified = False

    def _write_meta(self, complete: bool, sums: list[int] | None = None) -> None:
        meta = dict(key=self.key, describe=self.describe, item_num=self.item_num, shape=list(self.shape),
                    dtype=self.dtype, chunk=self.chunk, complete=complete)
        if sums is not None:
            meta["crc32"] = sums
        write_text_atomic(self.meta_path, json.dumps(meta, indent=1, default=str))

    # ------------------------------------------------------------------------------------------- rows
    def _to_numpy(self, rows: torch.Tensor) -> np.ndarray:
        rows = rows.detach().to("cpu", DTYPES[self.dtype][1]).contiguous()
        return rows.view(torch.int16).numpy().view(np.uint16) if self.dtype == "bfloat16" else rows.numpy()

    def _mapped(self) -> np.ndarray:
        if self._rows is None:
            if self.sums is None:
                sound, why = self.sound_complete()
                if not sound:
                    raise PrefixCacheError(f"{self.path}: no complete store to read ({why})")
            self._rows = np.load(self.path, mmap_mode="r")
            if self.verified is None:
                self.verified = np.zeros(self.n_chunks, dtype=bool)
        return self._rows

    def verify(self, chunks=None) -> list[int]:
        """Check the CRC-32 of ``chunks`` (default: all) not yet checked in this process; returns those that
        differ from what was written (the others count as checked)."""
        rows = self._mapped()
        chunks = range(self.n_chunks) if chunks is None else chunks
        bad = []
        for c in chunks:
            c = int(c)
            if self.verified[c]:
                continue
            items = self.chunk_items(c)
            if crc32(np.ascontiguousarray(rows[items[0]:items[-1] + 1])) != self.sums[c]:
                bad.append(c)
            else:
                self.verified[c] = True
        return bad

    def mark_verified(self) -> None:
        """Every chunk counts as checked in this process (and in the loader processes it starts later)."""
        self.verified = np.ones(self.n_chunks, dtype=bool)
        self._all_verified = True

    def damage_message(self, bad: list[int]) -> str:
        c = bad[0]
        items = self.chunk_items(c)
        return (f"{self.path}: the rows of {len(bad)} of {self.n_chunks} chunks are not the ones written, e.g. "
                f"chunk {c} (items {items[0]}..{items[-1]}): their CRC-32 differs from {self.meta_path.name}'s")

    def rows(self, ids) -> torch.Tensor:
        """``[len(ids), *shape]`` rows (torch float32 or bfloat16) of the given item ids; each chunk they fall in
        is checked against its CRC-32 the first time this process reads it (free once ``verify`` checked all)."""
        rows = self._mapped()
        ids = np.asarray(ids)
        if not self._all_verified:
            bad = self.verify(np.unique((ids[ids > 0] - 1) // self.chunk))
            self._all_verified = bool(self.verified.all())
            if bad:
                raise PrefixCacheError(self.damage_message(bad) + "; rerun: the launcher checks every chunk first "
                                       "and rebuilds a damaged store where its folder can be written")
        out = torch.from_numpy(np.ascontiguousarray(rows[ids]))
        return out.view(torch.bfloat16) if self.dtype == "bfloat16" else out

    def __getstate__(self):
        # a memory map is reopened by each process, never pickled; the lock stays with the process that took it
        return {**self.__dict__, "_rows": None, "_lock": None}
