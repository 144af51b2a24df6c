"""One file type for every per-item array this project writes: the encoder's frozen-prefix store, the ViNet
feature files and the item tables that ``REC.app.predict`` saves.

All three are ``[item_num, *shape]`` arrays whose row i belongs to internal item id i of one dataset's item order,
written in chunks of items by a process that may be killed, and read later by runs that must not take another
dataset's rows for theirs. So they share one layout, one way to be built and one way to be trusted:

- ``F.npy``: the rows, float32 or bfloat16 bits held as uint16 (numpy has no bfloat16); row 0 (padding) zero;
- ``F.json``: the description (``FORMAT``): ``kind``, the ``dataset`` and ``items_sha256`` (the sha256 of its item
  tokens in row order: the identity a reader checks), ``item_num``, the row ``shape`` and ``dtype``, the
  ``settings`` that made the rows, the ``chunk`` size and, once complete, one CRC-32 per chunk (``crc32``);
- ``F.items.txt``: the original id of every row, ``[PAD]`` first, for people and other tools.

A build writes ``F.npy.part`` (space reserved at creation, rows written with ``pwrite``, never through a memory
map, so a full disk is an error and not a SIGBUS) with ``F.part.json`` (its description), ``F.done`` (one byte per
chunk, set once the chunk's rows are on disk) and ``F.sums`` (each chunk's CRC-32, on disk before its done mark):
a killed build resumes at its first missing chunk. ``finish`` renames ``F.npy.part`` over ``F.npy`` in one step, so
a reader only ever maps a complete file, and a run that still maps the previous file keeps reading its inode. One
process builds a file at a time (``F.lock``, released with its process).

A complete file is trusted as far as it is checked: its description matches the reader's items (another dataset,
or the same items in another order, is an error naming both), its header and size (``npy_layout``), then each
chunk's CRC-32 before its rows are used.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..utils.errors import UserError
from ..utils.files import sidecar, write_text_atomic
from ..utils.integrity import DamagedFileError, crc32, npy_layout

log = logging.getLogger(__name__)

FORMAT, VERSION = "pixelrec-item-array", 1
NO_ROOM = (errno.ENOSPC, errno.EDQUOT)  # a full disk, or the user's quota on it
DTYPES = {"float32": (np.float32, torch.float32), "bfloat16": (np.uint16, torch.bfloat16)}
# (path, size, mtime) of the files whose every chunk was checked in this process, or by the launcher before it
# started this one (passed on through the environment), so the processes of a run do not read a file twice
VERIFIED_ENV = "PIXELREC_VERIFIED_ARRAYS"


class ItemArrayError(UserError, ValueError):
    """A per-item array file cannot be built (no room, settings that differ from a build in progress) or is not
    the one its reader needs (other items, damaged rows); the message names the file and what to do."""


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    raise AssertionError


@dataclass(frozen=True)
class ItemIdentity:
    """Which items the rows are: the dataset's name (for messages) and the sha256 of its item tokens in row order
    (what is compared: a renamed copy of a dataset keeps its rows, another item order does not)."""
    dataset: str
    items_sha256: str | None
    item_num: int

    @classmethod
    def of(cls, dataset: str, tokens) -> ItemIdentity:
        """From a ``TokenTable`` (padding token first)."""
        return cls(str(dataset), tokens.digest(), len(tokens))


class ItemArrayFile:
    """One per-item array file (see the module docstring): rank 0 or the one writing process ``create``s it, the
    writers ``write`` the chunks they are given, ``finish`` completes it; readers call ``rows`` or ``array``.
    Picklable: each process maps the file itself.

    ``chunk`` is how many items a done mark and a CRC-32 cover in a NEW file; a build found on disk keeps its own
    (``create`` adopts it), since it only says how the build was split, not what the rows are. ``room_hint``
    ends the message of a disk too small for the rows (what the user can change)."""

    error = ItemArrayError  # the class of this file type's one-line errors (a subclass may name its own)
    # a build in progress with other settings: an error naming them (hours of work are not discarded silently);
    # False for a file whose name already says its settings, where such a build can only be of an older layout
    other_builds_are_errors = True

    def __init__(self, path: str | Path, identity: ItemIdentity, kind: str, shape: tuple[int, ...], dtype: str,
                 chunk: int, settings: dict | None = None, room_hint: str = ""):
        if dtype not in DTYPES:
            raise ValueError(f"item array dtype {dtype!r} is not one of {sorted(DTYPES)}")
        self.path = Path(path)
        self.identity, self.kind, self.settings, self.room_hint = identity, kind, dict(settings or {}), room_hint
        self.item_num = int(identity.item_num)
        self.shape, self.dtype, self.chunk = tuple(int(s) for s in shape), dtype, max(1, int(chunk))
        self.meta_path, self.items_path = sidecar(self.path, "json"), sidecar(self.path, "items.txt")
        self.part_path = self.path.with_name(self.path.name + ".part")
        self.part_meta_path, self.done_path, self.sums_path, self.lock_path = (
            sidecar(self.path, suffix) for suffix in ("part.json", "done", "sums", "lock"))
        self._new_chunk = self.chunk
        self._rows = self._lock = self._offset = None
        self.sums: list[int] | None = None  # each chunk's CRC-32, from the description of a complete file
        self.verified: np.ndarray | None = None  # bool [n_chunks]: checked in this process (or before its fork)
        self._all_verified = False

    @classmethod
    def on_disk(cls, path: str | Path) -> ItemArrayFile | None:
        """The complete file at ``path`` as its description says (for readers that learn the shape from the file);
        None when ``path`` has no description of this format beside it (a file of an earlier format, or another
        tool's)."""
        path = Path(path)
        meta = read_json(sidecar(path, "json"))
        if meta is None or meta.get("format") != FORMAT:
            return None
        try:
            identity = ItemIdentity(str(meta["dataset"]), meta["items_sha256"], int(meta["item_num"]))
            found = cls(path, identity, str(meta["kind"]), tuple(meta["shape"]), str(meta["dtype"]),
                        int(meta["chunk"]), meta.get("settings"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ItemArrayError(f"{sidecar(path, 'json')}, the description of {path}, is incomplete ({exc!r})") \
                from None
        return found

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
        """The file's error when the disk of its folder (or of its nearest existing parent, before the folder is
        made) has less free space than the rows need."""
        free = self._free()
        if free < self.nbytes:
            raise self.error(self._no_room_message(free))

    def _free(self) -> int:
        folder = self.path.parent
        while not folder.exists():
            folder = folder.parent
        return shutil.disk_usage(folder).free

    def _no_room_message(self, free: int, during: str = "") -> str:
        return (f"{self.what} {during}needs {human_bytes(self.nbytes)} ({self.item_num - 1} items x "
                f"{' x '.join(map(str, self.shape))} x {self.itemsize} bytes) and {self.path.parent} has "
                f"{human_bytes(free)} free" + (f"; {self.room_hint}" if self.room_hint else ""))

    @property
    def what(self) -> str:
        """How messages name the file."""
        return f"{self.kind} {self.path}"

    @contextlib.contextmanager
    def _full_disk_is_an_error(self, during: str):
        """ENOSPC / EDQUOT inside the block -> the one-line error of ``check_room``, said ``during`` (space that
        others took after the check at creation)."""
        try:
            yield
        except OSError as exc:
            if exc.errno not in NO_ROOM:
                raise
            raise self.error(self._no_room_message(self._free(), during)) from None

    # ------------------------------------------------------------------------------------------- state
    def description(self, complete: bool, sums: list[int] | None = None) -> dict:
        meta = dict(format=FORMAT, version=VERSION, kind=self.kind, dataset=self.identity.dataset,
                    items_sha256=self.identity.items_sha256, item_num=self.item_num, shape=list(self.shape),
                    dtype=self.dtype, chunk=self.chunk, settings=self.settings, items_file=self.items_path.name,
                    rows="row i = internal item id i (first appearance in the CSV); row 0 = padding, zeros",
                    complete=complete)
        if sums is not None:
            meta["crc32"] = sums
        return meta

    def _describes_this(self, meta: dict | None) -> bool:
        """Whether ``meta`` is a description of these rows (items, kind, shape, dtype, settings); its chunk and
        checksums say how it was built, not what it holds."""
        if meta is None or meta.get("format") != FORMAT:
            return False
        mine = self.description(False)
        return all(_jsonable(meta.get(k)) == _jsonable(mine[k])
                   for k in ("kind", "items_sha256", "item_num", "shape", "dtype", "settings"))

    def differences(self, meta: dict) -> list[str]:
        """What differs between ``meta`` (a description on disk) and this file's, in words."""
        mine = self.description(False)
        changed = []
        for k in ("kind", "dataset", "items_sha256", "item_num", "shape", "dtype"):
            if _jsonable(meta.get(k)) != _jsonable(mine[k]):
                changed.append(f"{k}: {meta.get(k)!r} then, {mine[k]!r} now")
        old = meta.get("settings") if isinstance(meta.get("settings"), dict) else {}
        for k in sorted(set(old) | set(self.settings)):
            if _jsonable(old.get(k)) != _jsonable(self.settings.get(k)):
                changed.append(f"{k}: {old.get(k)!r} then, {self.settings.get(k)!r} now")
        return changed

    def read_meta(self) -> dict | None:
        return read_json(self.meta_path)

    @property
    def complete(self) -> bool:
        return self.sound_complete()[0]

    def sound_complete(self) -> tuple[bool, str]:
        """(True, "") when a complete file of these rows is on disk with a sound layout: its description, the
        header and size of its ``.npy``, a CRC-32 per chunk; else (False, why not). Reads; writes nothing."""
        meta = self.read_meta()
        if not self._describes_this(meta) or not meta.get("complete"):
            return False, "no complete file" if not self.meta_path.exists() else "not complete"
        chunk = int(meta["chunk"])
        sums = meta.get("crc32")
        if chunk < 1 or not isinstance(sums, list) or len(sums) != -(-(self.item_num - 1) // chunk):
            return False, f"{self.meta_path} records no checksum per chunk"
        try:
            npy_layout(self.path, (self.item_num, *self.shape), DTYPES[self.dtype][0])
        except DamagedFileError as exc:
            return False, str(exc)
        self.chunk, self.sums = chunk, [int(x) for x in sums]
        return True, ""

    def pending(self) -> list[int]:
        """The chunks still to write: none once complete (``finish`` removed the done marks)."""
        if not self.done_path.is_file():
            return [] if self.complete else list(range(self.n_chunks))
        done = np.fromfile(self.done_path, dtype=np.uint8)
        if len(done) != self.n_chunks:
            return list(range(self.n_chunks))
        return np.flatnonzero(done == 0).tolist()

    def create(self, restart: bool = False, rebuild: bool = False) -> str:
        """Find the file or start building it; returns what was found: 'complete', 'partial' (a killed build,
        resumed) or 'new'. Unless 'complete', this process then holds the file's lock until ``finish`` or
        ``release``: another process that wants the same file waits here meanwhile, so two builds never write
        one file. Refuses when the disk cannot hold the rows.

        A build in progress made with other settings is an error naming them (``other_builds_are_errors``);
        ``restart`` discards any build in progress. ``rebuild``: build anew even where a complete file
        of these rows exists (it is replaced only once the new one is complete). A sound complete file is found
        without the lock and without writing (a read-only folder serves it); only a build takes the lock."""
        sound, why = (False, "rebuild asked") if rebuild else self.sound_complete()
        if sound:
            return "complete"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(self.lock_path, "w")
        except OSError as exc:
            raise self.error(self._cannot_build_message(why, exc)) from None
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("another process is building %s; waiting for it", self.path)
                fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._create(restart, rebuild)
        except BaseException:
            lock.close()
            raise
        if state == "complete":
            lock.close()
        else:
            self._lock = lock
        return state

    def _cannot_build_message(self, why: str, exc: OSError) -> str:
        if self.meta_path.exists() or self.path.exists():
            return (f"{self.what} cannot be used ({why}) and cannot be rebuilt there ({exc.strerror})"
                    + (f"; {self.room_hint}" if self.room_hint else ""))
        return (f"{self.what} cannot be built in {self.path.parent} ({exc.strerror})"
                + (f"; {self.room_hint}" if self.room_hint else ""))

    def release(self) -> None:
        """Let another process build (or resume) the file; ``finish`` releases too."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _create(self, restart: bool, rebuild: bool) -> str:
        sound, why = (False, "") if rebuild else self.sound_complete()
        if sound:  # built by the process we waited for
            return "complete"
        meta = self.read_meta()
        if not rebuild and self._describes_this(meta) and meta.get("complete"):
            log.warning("%s: %s; rebuilding it", self.what, why)
        part = read_json(self.part_meta_path)
        if part is not None and not restart and self.other_builds_are_errors and not self._describes_this(part):
            raise self.error(f"{self.part_path} was started with other settings ({'; '.join(self.differences(part))}"
                             f"); rerun with the settings it was started with to continue it, or discard it "
                             f"(--restart)")
        if self._describes_this(part) and not restart:
            self.chunk = max(1, int(part["chunk"]))  # the build's split into done marks, not this run's
            done = self.done_path.stat().st_size if self.done_path.is_file() else -1
            sums = self.sums_path.stat().st_size if self.sums_path.is_file() else -1
            if self._holds_rows(self.part_path) and done == self.n_chunks and sums == 4 * self.n_chunks:
                return "partial"
            log.warning("%s: the build in progress lacks its rows or marks; starting afresh", self.what)
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
                write_text_atomic(self.part_meta_path, json.dumps(self.description(False), indent=1, default=str))
        except BaseException:
            self.part_path.unlink(missing_ok=True)  # nothing half-made stays behind
            raise
        return "new"

    def adopt_rows(self, part: Path, rows_done: int, chunk: int) -> None:
        """Continue a build of an earlier format: ``part`` (a ``.npy`` of this file's full shape and dtype, rows
        ``1..rows_done-1`` written) becomes this build's ``.part`` in chunks of ``chunk`` items, those wholly
        written counted done, with their CRC-32s computed now. Call before ``create``."""
        npy_layout(part, (self.item_num, *self.shape), DTYPES[self.dtype][0])
        self.chunk = max(1, int(chunk))
        done = np.zeros(self.n_chunks, np.uint8)
        sums = np.zeros(self.n_chunks, np.uint32)
        rows = np.load(part, mmap_mode="r")
        for c in range(self.n_chunks):
            items = self.chunk_items(c)
            if items[-1] >= rows_done:
                break
            sums[c], done[c] = crc32(np.ascontiguousarray(rows[items[0]:items[-1] + 1])), 1
        del rows
        os.replace(part, self.part_path)
        sums.tofile(self.sums_path)
        done.tofile(self.done_path)
        write_text_atomic(self.part_meta_path, json.dumps(self.description(False), indent=1, default=str))

    def _holds_rows(self, path: Path) -> bool:
        return path.is_file() and path.stat().st_size >= self.nbytes

    def _data_offset(self) -> int:
        """Where row 0 starts in the .npy file (after numpy's header)."""
        if self._offset is None:
            header = np.load(self.part_path, mmap_mode="r")  # a read-only map of the header's file: never a SIGBUS
            self._offset = header.offset
            del header
        return self._offset

    def write(self, c: int, rows) -> None:
        """Rows of chunk ``c`` (``chunk_items(c)`` in order; a torch tensor or numpy array), on disk before the
        chunk is marked done."""
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

    def finish(self, tokens=None) -> None:
        """Once every chunk is written: the item ids (``tokens``, a ``TokenTable``; None leaves the ids file
        out), then the built file replaces ``F.npy`` in one rename, then the description says complete and the
        build's files go; the lock is released."""
        try:
            left = self.pending()
            if left:
                raise self.error(f"{self.part_path}: chunks {left[:10]} of {self.n_chunks} were never written")
            if self.part_path.is_file():  # else finished already: a second call changes nothing
                sums = np.fromfile(self.sums_path, dtype=np.uint32).tolist()
                with self._full_disk_is_an_error("ran out of room while being completed: it "):
                    if tokens is not None:
                        write_text_atomic(self.items_path, "\n".join(tokens.to_list()) + "\n")
                    os.replace(self.part_path, self.path)  # a reader of the old file keeps its inode
                    self._write_meta(complete=True, sums=sums)
                for path in (self.part_meta_path, self.done_path, self.sums_path):
                    path.unlink(missing_ok=True)
                self._rows = None  # a map of the previous file, if any, is not this one
                self.sums = sums
        finally:
            self.release()

    def invalidate(self) -> None:
        """Mark a complete file as not complete (its rows failed their checksums), so the next ``create``
        builds it anew; the damaged file stays until the new one replaces it (a reader keeps its inode)."""
        self._write_meta(complete=False)
        self.close()

    def close(self) -> None:
        """Forget the map and the checks: the next read maps the file now at ``path`` (after a rebuild, the new
        one; a kept map would go on reading the old file's inode)."""
        self._rows = self.sums = self.verified = None
        self._all_verified = False

    def _write_meta(self, complete: bool, sums: list[int] | None = None) -> None:
        write_text_atomic(self.meta_path, json.dumps(self.description(complete, sums), indent=1, default=str))

    # ------------------------------------------------------------------------------------------- reading
    def check_items(self, identity: ItemIdentity, redo: str) -> None:
        """The reader's error unless the rows are ``identity``'s items in its order."""
        mine = self.identity
        if identity.items_sha256 is not None and mine.items_sha256 != identity.items_sha256 \
                or mine.item_num != identity.item_num:
            theirs = f"dataset {identity.dataset!r}" if identity.dataset else "items"
            raise self.error(
                f"{self.path} was made for dataset {mine.dataset!r} ({mine.item_num - 1} items, items_sha256 "
                f"{str(mine.items_sha256)[:12]}...), not for this run's {theirs} ({identity.item_num - 1} items, "
                f"items_sha256 {str(identity.items_sha256)[:12]}...): its rows are other items, or the same ones in "
                f"another order; {redo}")

    def _to_numpy(self, rows) -> np.ndarray:
        if isinstance(rows, np.ndarray):
            return rows.astype(DTYPES[self.dtype][0], copy=False)
        rows = rows.detach().to("cpu", DTYPES[self.dtype][1]).contiguous()
        return rows.view(torch.int16).numpy().view(np.uint16) if self.dtype == "bfloat16" else rows.numpy()

    def _mapped(self, mode: str = "r") -> np.ndarray:
        if self._rows is None:
            if self.sums is None:
                sound, why = self.sound_complete()
                if not sound:
                    raise self.error(f"{self.path}: no complete file to read ({why})")
            self._rows = np.load(self.path, mmap_mode=mode)
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
                raise self.error(self.damage_message(bad) + "; rerun: the launcher checks every chunk first "
                                 "and rebuilds a damaged store where its folder can be written")
        out = torch.from_numpy(np.ascontiguousarray(rows[ids]))
        return out.view(torch.bfloat16) if self.dtype == "bfloat16" else out

    def array(self, redo: str) -> np.ndarray:
        """The whole ``[item_num, *shape]`` array, memory-mapped copy-on-write (pages load as rows are used and
        are shared through the page cache), after every chunk's CRC-32 was checked once: in this process, or in
        the launcher that started it (``VERIFIED_ENV``). Damaged rows are the error, with ``redo``."""
        sound, why = self.sound_complete()
        if not sound:
            raise self.error(f"{self.path}: {why}; {redo}")
        self._rows = None
        rows = self._mapped("c")  # one map, checked and then returned
        if not verified_before(self.path):
            bad = self.verify()
            if bad:
                raise self.error(f"{self.damage_message(bad)}; {redo}")
            mark_verified(self.path)
        return rows

    def __getstate__(self):
        # a memory map is reopened by each process, never pickled; the lock stays with the process that took it
        return {**self.__dict__, "_rows": None, "_lock": None}


def _version(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def verified_before(path: Path) -> bool:
    """Whether every byte of the file at ``path`` (this version of it: size and modification time) was checked
    against its checksums in this process or in the launcher that started it."""
    return _version(Path(path)) in os.environ.get(VERIFIED_ENV, "").split("|")


def mark_verified(path: Path) -> None:
    """Record that ``path`` was checked whole; processes started after this inherit the record."""
    known = {v for v in os.environ.get(VERIFIED_ENV, "").split("|") if v}
    os.environ[VERIFIED_ENV] = "|".join(sorted(known | {_version(Path(path))}))


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``; None when it is missing, unreadable or not an object."""
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _jsonable(value):
    """``value`` as it reads back from JSON (tuples become lists, keys strings), so that settings compare equal
    before and after a round trip."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))
