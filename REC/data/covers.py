"""Read side of the covers database built by ``generate_lmdb.py`` (write side: ``cover_pack.py``).

LMDB layout (format ``pixelrec-covers``, version 1); nothing in it is pickled, unlike the original:

- key ``<item token>`` (the CSV's ``item_id`` string, e.g. ``i12345``) utf-8 encoded -> one encoded cover;
- key ``b"__meta__"`` -> JSON ``{"format": "pixelrec-covers", "version": 1, "encoding": "raw"|"png"|"jpeg",
  "height": H, "width": W, "channels": 3}``, written in the database's first transaction.

Encoding ``raw`` is the H x W x 3 uint8 array's bytes in C order (HWC, exactly the pixels the original
stored); ``png`` and ``jpeg`` are the image file's bytes. An item without a key has no usable cover: the
original kept a ``__keys__`` list that included failed items and crashed on them mid-training;
here a missing cover is found up front by :meth:`CoverStore.missing` or named by :meth:`CoverStore.get`.
"""
from __future__ import annotations

import io
import json
import os

import lmdb
import numpy as np
from PIL import Image

from .interactions import DataError, TokenTable

META_KEY = b"__meta__"
FORMAT = "pixelrec-covers"
VERSION = 1
ENCODINGS = ("raw", "png", "jpeg")
DEFAULT_NAME = "covers.lmdb"  # generate_lmdb.py writes <data_path>/covers.lmdb; cover_lmdb: null reads it there
MAX_READERS = 4096  # lock=False makes readers free; a high value only matters if someone opens with a lock


class CoverError(DataError):
    """The covers database is absent, not ours, or lacks a cover; the message says which item and what to run."""


def make_meta(encoding: str, size: int) -> dict:
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding {encoding!r} is not one of {ENCODINGS}")
    return {"format": FORMAT, "version": VERSION, "encoding": encoding, "height": size, "width": size, "channels": 3}


def parse_meta(raw: bytes | None, path) -> dict:
    """The ``__meta__`` record checked for shape; a CoverError naming ``path`` when it is absent or foreign."""
    if raw is None:
        raise CoverError(f"{path} is not a covers database made by generate_lmdb.py (no __meta__ key); "
                         f"build one with `python generate_lmdb.py`")
    try:
        meta = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CoverError(f"{path} is not a covers database made by generate_lmdb.py (__meta__ is {bytes(raw)[:80]!r})")
    if meta.get("version") != VERSION or meta.get("encoding") not in ENCODINGS or meta.get("channels") != 3:
        raise CoverError(f"{path}: unsupported covers database (__meta__ {meta}); this code reads version {VERSION}, "
                         f"encodings {ENCODINGS}, 3 channels; rebuild it with `python generate_lmdb.py`")
    return meta


def decode_cover(buf, encoding: str, height: int, width: int, token: str) -> np.ndarray:
    """One stored value -> H x W x 3 uint8 (a view into ``buf`` for raw; copy it before ``buf`` goes away)."""
    if encoding == "raw":
        array = np.frombuffer(buf, dtype=np.uint8)
        if array.size != height * width * 3:
            raise CoverError(f"cover of {token}: {array.size} raw bytes, expected {height}x{width}x3 = "
                             f"{height * width * 3}")
        return array.reshape(height, width, 3)
    try:
        with Image.open(io.BytesIO(bytes(buf))) as img:
            array = np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise CoverError(f"cover of {token}: cannot decode the stored {encoding}: {exc}") from None
    if array.shape != (height, width, 3):
        raise CoverError(f"cover of {token}: decoded {array.shape[1]}x{array.shape[0]}, the database says "
                         f"{width}x{height}")
    return array


_ENVS: dict[tuple, tuple[int, lmdb.Environment]] = {}  # data file identity -> (pid, read-only environment)


def _process_env(path: str) -> lmdb.Environment:
    """This process's one read-only environment on ``path``, shared by every CoverStore that reads it.

    LMDB forbids opening the same files twice in one process, and forbids using an environment inherited
    through fork (py-lmdb refuses to reopen it until the inherited handle is closed): the child closes its copy
    (its own mapping and descriptors only; the parent's stay valid) and opens its own.
    """
    if not os.path.exists(path):
        raise CoverError(f"covers database {path} does not exist; build it with `python generate_lmdb.py` "
                         f"(see its --help for the CSV and covers folder) or set cover_lmdb")
    subdir = os.path.isdir(path)
    data_file = os.path.join(path, "data.mdb") if subdir else path
    if not os.path.exists(data_file):
        raise CoverError(f"{path} is not a covers database made by generate_lmdb.py (no data.mdb in it)")
    stat = os.stat(data_file)
    key = (stat.st_dev, stat.st_ino)  # a rebuilt database is new files, hence a new environment
    entry = _ENVS.get(key)
    if entry is not None and entry[0] == os.getpid():
        return entry[1]
    if entry is not None:
        entry[1].close()
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False, subdir=subdir,
                        max_readers=MAX_READERS)
    except lmdb.Error as exc:
        raise CoverError(f"{path} is not a covers database made by generate_lmdb.py ({exc})") from None
    _ENVS[key] = (os.getpid(), env)
    return env


class CoverStore:
    """Covers by internal item id: ``get(ids)`` -> uint8 ``[*ids.shape, 3, H, W]``; id 0 (padding) is all zeros.

    ``item_tokens``: a :class:`TokenTable` (index = internal item id, 0 = padding), or a list of str indexed the
    same way (element 0 is the padding and is not looked up). Safe to hand to DataLoader workers: the LMDB
    environment is dropped when pickled and reopened lazily, once per process (also after a fork).
    """

    def __init__(self, path, item_tokens):
        self.path = str(path)
        if not isinstance(item_tokens, TokenTable):
            item_tokens = list(item_tokens)
            item_tokens = TokenTable.from_strings(item_tokens[1:])
        self.tokens = item_tokens
        self._env = None
        self._pid = None
        with self._begin() as txn:
            self.meta = parse_meta(txn.get(META_KEY), self.path)

    # --------------------------------------------------------------------------------------- environment
    def _open(self) -> lmdb.Environment:
        if self._env is None or self._pid != os.getpid():
            self._env, self._pid = _process_env(self.path), os.getpid()
        return self._env

    def _begin(self) -> lmdb.Transaction:
        env = self._open()
        try:
            return env.begin(buffers=True)
        except lmdb.MapResizedError:  # a concurrent generate_lmdb.py grew the file past our map
            env.set_mapsize(0)
            return env.begin(buffers=True)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_env"] = None
        state["_pid"] = None
        return state

    # --------------------------------------------------------------------------------------- properties
    @property
    def height(self) -> int:
        return int(self.meta["height"])

    @property
    def width(self) -> int:
        return int(self.meta["width"])

    @property
    def encoding(self) -> str:
        return self.meta["encoding"]

    def __len__(self) -> int:
        """Item-id range, padding included (as ``item_num``)."""
        return len(self.tokens)

    def _key(self, item: int) -> bytes:
        offsets = self.tokens.offsets
        return self.tokens.blob[offsets[item]:offsets[item + 1]].tobytes()

    def _check_range(self, flat: np.ndarray) -> None:
        if flat.size and (flat.min() < 0 or flat.max() >= len(self.tokens)):
            bad = flat[(flat < 0) | (flat >= len(self.tokens))][:5]
            raise CoverError(f"item ids {bad.tolist()} are outside [0, {len(self.tokens)}) for {self.path}")

    # --------------------------------------------------------------------------------------- reading
    def get(self, ids) -> np.ndarray:
        """uint8 ``[*ids.shape, 3, H, W]`` (CHW, contiguous); a non-zero id without a cover is a CoverError."""
        ids = np.asarray(ids)
        flat = ids.reshape(-1).astype(np.int64, copy=False)
        self._check_range(flat)
        height, width, encoding = self.height, self.width, self.encoding
        out = np.zeros((flat.size, 3, height, width), dtype=np.uint8)
        with self._begin() as txn:
            for k, item in enumerate(flat.tolist()):
                if item == 0:
                    continue
                key = self._key(item)
                buf = txn.get(key)
                if buf is None:
                    raise CoverError(f"no cover for item {key.decode('utf-8')} (internal id {item}) in {self.path}; "
                                     f"rerun `python generate_lmdb.py` and check its report.json")
                out[k] = decode_cover(buf, encoding, height, width, key.decode("utf-8")).transpose(2, 0, 1)
        return out.reshape(*ids.shape, 3, height, width)

    def missing(self, ids=None) -> np.ndarray:
        """Sorted distinct non-zero ids (default: every item) that have no cover; one read transaction."""
        flat = np.arange(1, len(self.tokens)) if ids is None else np.unique(np.asarray(ids, dtype=np.int64))
        self._check_range(flat)
        flat = flat[flat != 0]
        blob, offsets = self.tokens.blob.tobytes(), self.tokens.offsets.tolist()  # plain slicing: 400K keys in ~0.1 s
        absent = []
        # buffers=True hands back a pointer into the map, so the (overflow) value pages are never touched.
        with self._begin() as txn:
            for item in flat.tolist():
                if txn.get(blob[offsets[item]:offsets[item + 1]]) is None:
                    absent.append(item)
        return np.asarray(absent, dtype=np.int64)

    def __repr__(self) -> str:
        return (f"CoverStore({self.path!r}, {len(self.tokens) - 1} items, {self.encoding} "
                f"{self.width}x{self.height})")
