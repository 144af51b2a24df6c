"""Write side of the covers database: item covers (JPEG/PNG/WebP files) -> one LMDB (layout: ``covers.py``).

``pack_covers`` is what ``generate_lmdb.py`` runs. Differences from the original builder, on purpose:
values are raw pixels or image-file bytes, never pickles; decoding and resizing run on every core; a failed
item gets no key (and is listed in ``report.json``) instead of a key list that names it; a rerun resumes,
because writes are committed in bounded transactions, and skips a stored item only while its file is unchanged.
The pixels are the original's: RGB, resized to exactly size x size with PIL bilinear (what torchvision's
``Resize((224, 224))`` does to a PIL image), stored HWC uint8 when ``encoding="raw"``. One deliberate difference:
16-bit greyscale (PIL modes ``I;16*`` and ``I``) is scaled to 8 bits first, where the original's
``convert("RGB")`` clipped it at 255 (almost white); floating-point images (mode ``F``) are reported unreadable.

Changed covers. Next to the database (``sources.mdb`` in its folder, so the covers' own layout stays the one
``covers.py`` reads) each stored item's source file is recorded as its name, size and modification time, the test
make and rsync use. A rerun repacks an item whose file differs from its record (or that has no record: a database
from before this record existed, or a kill at the wrong moment), removes the stored cover of an item whose changed
file can no longer be read (so training refuses it instead of using stale pixels), and keeps the stored cover of
an item whose file is gone (covers may be deleted once packed). Not seen: an edit that keeps the size and the
modification time (``touch -r``); pack into a fresh ``--output`` to be sure.
"""
from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lmdb
import numpy as np
import pandas as pd
from PIL import Image

from .covers import ENCODINGS, META_KEY, CoverError, make_meta, parse_meta
from ..utils.files import write_text_atomic
from .interactions import DataError, not_utf8_error

log = logging.getLogger(__name__)
LMDB_MAX_KEY = 511
SOURCES_NAME = "sources.mdb"  # per item: the file its cover was packed from (see the module docstring)
CSV_CHUNK_ROWS = 5_000_000  # the full PixelRec CSV has ~200M rows; one column read in chunks stays small
SHOW = 20                   # tokens of each list printed in the summary (report.json has them all)


@dataclass
class PackReport:
    """What one ``pack_covers`` run did; saved as ``report.json`` in the database folder."""

    csv_file: str
    images_dir: str
    output: str
    size: int
    encoding: str
    items: int = 0                                       # distinct item_id values in the CSV
    stored: int = 0                                      # covers written by this run: new + changed + unrecorded
    new: int = 0                                         # ... of items the database did not have
    changed: int = 0                                     # ... replacing a cover whose file changed since it was packed
    unrecorded: int = 0                                  # ... replacing a cover with no record of its file
    skipped: int = 0                                     # items already in the database, file unchanged (or gone)
    gone: list = field(default_factory=list)             # tokens stored earlier whose file is gone (cover kept)
    removed: list = field(default_factory=list)          # tokens whose cover was deleted: file changed, unreadable
    missing: list = field(default_factory=list)          # tokens with no <token>.<ext> file
    unreadable: dict = field(default_factory=dict)       # token -> PIL's error text
    odd_sized: dict = field(default_factory=dict)        # token -> "WxH", source size != common_size
    source_sizes: dict = field(default_factory=dict)     # "WxH" -> count, this run's readable images
    common_size: str | None = None                       # most common source size among this run's images
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every item of the CSV has a cover in the database."""
        return not self.missing and not self.unreadable

    def save(self, path) -> None:
        write_text_atomic(path, json.dumps(asdict(self), indent=1) + "\n")

    def summary(self) -> str:
        def first(tokens, detail=None):
            shown = [f"{t} ({detail[t]})" if detail else t for t in list(tokens)[:SHOW]]
            more = f", ... ({len(tokens) - SHOW} more)" if len(tokens) > SHOW else ""
            return ", ".join(shown) + more

        unrecorded = (f"; repacked, no record of the file it came from (an older database): {self.unrecorded:,}"
                      if self.unrecorded else "")
        gone = f" ({len(self.gone):,} of them have no file now; their covers are kept)" if self.gone else ""
        lines = [f"covers: {self.items:,} items in {self.csv_file} -> {self.output} "
                 f"({self.encoding}, {self.size}x{self.size}) in {self.seconds:.1f} s",
                 f"  stored now: {self.stored:,} (new: {self.new:,}; repacked, file changed since packed: "
                 f"{self.changed:,}{unrecorded}); already stored (skipped): {self.skipped:,}, file unchanged{gone}; "
                 f"stale covers removed: {len(self.removed):,}; "
                 f"without a usable image: {len(self.missing) + len(self.unreadable):,}"]
        if self.missing:
            lines.append(f"  missing, no file in {self.images_dir} ({len(self.missing):,}): {first(self.missing)}")
        if self.unreadable:
            errors = {t: e[:120] for t, e in list(self.unreadable.items())[:SHOW]}
            lines.append(f"  unreadable ({len(self.unreadable):,}): {first(self.unreadable, errors)}")
        if self.removed:
            lines.append(f"  removed, file changed and now unreadable ({len(self.removed):,}): {first(self.removed)}")
        if self.gone:
            lines.append(f"  kept, file gone from {self.images_dir} ({len(self.gone):,}): {first(self.gone)}")
        if self.odd_sized:
            lines.append(f"  odd-sized, source differs from the usual {self.common_size} ({len(self.odd_sized):,}; "
                         f"stored resized like the rest): {first(self.odd_sized, self.odd_sized)}")
        if self.source_sizes:
            sizes = ", ".join(f"{s}: {n:,}" for s, n in list(self.source_sizes.items())[:SHOW])
            lines.append(f"  source sizes: {sizes}")
        lines.append(f"  full report: {Path(self.output) / 'report.json'}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ inputs
def read_item_tokens(csv_file) -> list[str]:
    """Distinct ``item_id`` values in order of first appearance (the original's ``pandas.unique``)."""
    csv_file = Path(csv_file)
    if not csv_file.is_file():
        raise DataError(f"interactions file {csv_file} does not exist")
    try:
        header = pd.read_csv(csv_file, nrows=0, encoding="utf-8").columns.tolist()
    except pd.errors.EmptyDataError:
        raise DataError(f"{csv_file}: the file is empty (no header line); expected a CSV whose header is "
                        f"item_id,user_id,timestamp") from None
    except UnicodeDecodeError:
        raise not_utf8_error(csv_file) from None
    except ValueError as exc:
        raise DataError(f"{csv_file}: cannot read a CSV header ({exc})") from None
    if "item_id" not in header:
        raise DataError(f"{csv_file}: header is {header}; expected an item_id column (PixelRec files start "
                        f"item_id,user_id,timestamp)")
    uniques, row = [], 0
    try:
        # ids verbatim, as training reads them (REC.data.interactions): NA, null, nan are items, not missing values
        for chunk in pd.read_csv(csv_file, usecols=["item_id"], dtype=str, encoding="utf-8", keep_default_na=False,
                                 chunksize=CSV_CHUNK_ROWS):
            column = chunk["item_id"]
            empty = (column == "").to_numpy()
            if empty.any():
                line = row + int(np.flatnonzero(empty)[0]) + 2
                raise DataError(f"{csv_file}: empty item_id on line {line}")
            uniques.append(pd.unique(column))
            row += len(column)
    except UnicodeDecodeError:  # uncaught, it would exit 1, the code for "covers missing"
        raise not_utf8_error(csv_file) from None
    if row == 0:
        raise DataError(f"{csv_file}: no rows after the header, so there are no items to pack")
    tokens = pd.unique(np.concatenate(uniques)).tolist()
    too_long = [t for t in tokens if len(t.encode("utf-8")) > LMDB_MAX_KEY]
    if too_long:
        raise DataError(f"{csv_file}: item_id {too_long[0][:60]!r}... is longer than LMDB's {LMDB_MAX_KEY}-byte key limit")
    return tokens


def find_images(images_dir, extensions=("jpg", "jpeg", "png", "webp")) -> dict[str, str]:
    """``{stem: path}`` for ``<images_dir>/<stem>.<ext>``, from one directory listing (no stat per item).

    Extensions match case-insensitively; when a stem has several files, the earlier extension wins.
    """
    rank = {e.lower().lstrip("."): k for k, e in enumerate(extensions)}
    found: dict[str, tuple[int, str]] = {}
    try:
        with os.scandir(images_dir) as entries:
            for entry in entries:
                stem, dot, ext = entry.name.rpartition(".")
                k = rank.get(ext.lower()) if dot else None
                if k is None or not entry.is_file():
                    continue
                if stem not in found or k < found[stem][0]:
                    found[stem] = (k, entry.path)
    except FileNotFoundError:
        raise DataError(f"covers folder {images_dir} does not exist (expected <item_id>.jpg files in it)") from None
    except NotADirectoryError:
        raise DataError(f"covers folder {images_dir} is not a folder") from None
    return {stem: path for stem, (_, path) in found.items()}


# ------------------------------------------------------------------------------------------------ workers
_SETTINGS: dict = {}


def _init_worker(size: int, encoding: str, quality: int) -> None:
    _SETTINGS.update(size=size, encoding=encoding, quality=quality)


SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB, with the samples' full range kept.

    Pillow's ``convert("RGB")`` clips integer samples above 255, so a 16-bit grey PNG (mode ``I;16``, or ``I`` in
    older Pillow) comes out almost white; here 16-bit samples keep their top byte (``v >> 8``: 65535 -> 255).
    Mode ``I`` is 32-bit, but a cover file only gets it from 16-bit data, so values outside 0..65535 are refused
    rather than guessed at, as is mode ``F``: floating-point pixels have no agreed range (0..1 or 0..255).
    """
    if img.mode in SIXTEEN_BIT or img.mode == "I":
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"mode {img.mode} pixels span {values.min()}..{values.max()}, outside the 16-bit "
                             f"range 0..65535; save the cover as 8-bit RGB")
        return Image.fromarray((values.astype(np.uint32) >> 8).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        raise ValueError("mode F: floating-point pixels have no agreed range (0..1? 0..255?); save the cover as "
                         "8-bit RGB")
    return img.convert("RGB")


def _encode(task: tuple[str, str]):
    """(token, file) -> (token, encoded bytes or None, (width, height) of the source or None, error or None)."""
    token, path = task
    size, encoding = _SETTINGS["size"], _SETTINGS["encoding"]
    try:
        with Image.open(path) as img:
            source = img.size
            rgb = to_rgb(img)
        small = rgb.resize((size, size), Image.BILINEAR)
        if encoding == "raw":
            value = np.asarray(small, dtype=np.uint8).tobytes()  # HWC, C order
        else:
            buf = io.BytesIO()
            if encoding == "png":
                small.save(buf, format="PNG")
            else:  # 4:4:4 keeps full colour resolution; covers are small, fidelity is worth the bytes
                small.save(buf, format="JPEG", quality=_SETTINGS["quality"], subsampling=0)
            value = buf.getvalue()
    except Exception as exc:  # noqa: BLE001 (any decoder failure is a per-item report entry, never a crash)
        return token, None, None, f"{type(exc).__name__}: {exc}"
    return token, value, source, None


# ------------------------------------------------------------------------------------------------ LMDB
def _commit(env: lmdb.Environment, writes: list[tuple[bytes, bytes | None]]) -> None:
    """One transaction of puts (``None``: delete), growing the map until it fits."""
    if not writes:
        return
    nbytes = sum(len(key) + len(value or b"") for key, value in writes)
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, value in writes:
                    if value is None:
                        txn.delete(key)
                    else:
                        txn.put(key, value)
            return
        except lmdb.MapFullError:  # the transaction was aborted; a bigger map and the same writes again
            info = env.info()
            used = (info["last_pgno"] + 1) * env.stat()["psize"]
            env.set_mapsize(max(2 * info["map_size"], used + 4 * nbytes))


class _Writer:
    """Buffers covers and commits them in transactions of about ``txn_bytes``, keeping ``sources`` (each stored
    cover's file record) in step."""

    def __init__(self, env: lmdb.Environment, sources: lmdb.Environment, txn_bytes: int, meta: dict | None):
        self.env, self.sources, self.txn_bytes = env, sources, txn_bytes
        self.meta = meta  # written with the first transaction, then None
        self.pending: list[tuple[bytes, bytes | None, bytes | None, bool]] = []  # key, cover, record, replaces
        self.pending_bytes = 0
        self.committed = 0  # covers written (removals not counted)

    def put(self, key: bytes, value: bytes, record: bytes, replaces: bool) -> None:
        self.pending.append((key, value, record, replaces))
        self.pending_bytes += len(key) + len(value)
        if self.pending_bytes > self.txn_bytes:
            self.flush()

    def remove(self, key: bytes) -> None:
        self.pending.append((key, None, None, True))

    def flush(self) -> None:
        """Covers and records are two databases, hence two transactions; the order makes a kill between them
        harmless: a record never names a file whose pixels are not the stored ones. A new key's record goes first
        (a kill leaves a record without a cover, which is ignored and overwritten); a replaced or removed key's
        old record is deleted first (a kill leaves old pixels without a record, which the next run repacks) and
        its new record written last."""
        if not self.pending and self.meta is None:
            return
        _commit(self.sources, [(key, None if replaces else record) for key, _, record, replaces in self.pending])
        covers = [(META_KEY, json.dumps(self.meta).encode("utf-8"))] if self.meta is not None else []
        _commit(self.env, covers + [(key, value) for key, value, _, _ in self.pending])
        _commit(self.sources, [(key, record) for key, value, record, replaces in self.pending
                               if replaces and value is not None])
        self.committed += sum(value is not None for _, value, _, _ in self.pending)
        self.meta, self.pending, self.pending_bytes = None, [], 0


def _open_output(out_path: Path, txn_bytes: int) -> tuple[lmdb.Environment, lmdb.Environment]:
    """The covers database and its file records (``SOURCES_NAME``), both created when absent."""
    if out_path.exists() and not out_path.is_dir():
        raise DataError(f"output {out_path} is a file; the covers database is a folder (choose another --output)")
    ours = ("lock.mdb", "report.json", SOURCES_NAME, f"{SOURCES_NAME}-lock")
    if out_path.is_dir() and not (out_path / "data.mdb").exists():
        strangers = [p.name for p in out_path.iterdir() if p.name not in ours][:5]
        if strangers:
            raise DataError(f"output {out_path} is a non-empty folder that is not a covers database "
                            f"(it holds {strangers}); choose another --output")
    out_path.mkdir(parents=True, exist_ok=True)

    def size(name):
        return (out_path / name).stat().st_size if (out_path / name).exists() else 0

    # Room for a few transactions; _commit doubles the map each time it fills up (a few times over a whole pack).
    env = lmdb.open(str(out_path), subdir=True, map_size=2 * size("data.mdb") + 4 * txn_bytes + (1 << 20),
                    readonly=False, meminit=False)
    sources = lmdb.open(str(out_path / SOURCES_NAME), subdir=False, map_size=2 * size(SOURCES_NAME) + (64 << 20),
                        readonly=False, meminit=False)
    return env, sources


def _stored_keys(env: lmdb.Environment, out_path: Path, meta: dict) -> tuple[set[bytes], bool]:
    """Keys already in the database (meta excluded) and whether ``__meta__`` must still be written."""
    with env.begin() as txn:
        raw_meta = txn.get(META_KEY)
        keys = set(txn.cursor().iternext(keys=True, values=False))
    keys.discard(META_KEY)
    if raw_meta is None:
        if keys:
            raise CoverError(f"{out_path} holds {len(keys):,} keys but no __meta__: not a covers database made by "
                             f"generate_lmdb.py; choose another --output")
        return keys, True
    old = parse_meta(raw_meta, out_path)
    if (old["encoding"], old["height"], old["width"]) != (meta["encoding"], meta["height"], meta["width"]):
        raise CoverError(f"{out_path} was made with encoding {old['encoding']}, size {old['width']}x{old['height']}; "
                         f"this run asks for {meta['encoding']}, {meta['width']}x{meta['height']}. Resume with the "
                         f"same options, or choose another --output")
    return keys, False


def file_record(path) -> bytes:
    """What a rerun compares to tell a changed cover: the file's name, size and modification time (following a
    symlink to its target). Hashing the contents would make every rerun read the whole covers folder."""
    stat = os.stat(path)
    return json.dumps([os.path.basename(path), stat.st_size, stat.st_mtime_ns]).encode("utf-8")


# ------------------------------------------------------------------------------------------------ main entry
def pack_covers(csv_file, images_dir, out_path, size: int = 224, encoding: str = "raw", quality: int = 95,
                workers: int | None = None, txn_megabytes: float = 256,
                extensions=("jpg", "jpeg", "png", "webp")) -> PackReport:
    """Pack ``<images_dir>/<item_id>.<ext>`` for every distinct ``item_id`` of ``csv_file`` into ``out_path``.

    Resumes: items already in ``out_path`` are skipped while their file is unchanged, repacked when it changed
    (module docstring). Items with no file or an unreadable one get no key and are listed in the returned report
    (also written to ``out_path/report.json``); nothing here raises on a bad image. Raises DataError for an
    unusable CSV, covers folder or output.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding {encoding!r} is not one of {ENCODINGS}")
    if size < 1 or not 1 <= quality <= 100 or txn_megabytes <= 0 or (workers is not None and workers < 1):
        raise ValueError(f"need size >= 1, 1 <= quality <= 100, txn_megabytes > 0, workers >= 1; got size={size}, "
                         f"quality={quality}, txn_megabytes={txn_megabytes}, workers={workers}")
    start = time.perf_counter()
    out_path = Path(out_path)
    report = PackReport(csv_file=str(csv_file), images_dir=str(images_dir), output=str(out_path), size=size,
                        encoding=encoding)
    tokens = read_item_tokens(csv_file)
    images = find_images(images_dir, extensions)
    report.items = len(tokens)

    meta = make_meta(encoding, size)
    txn_bytes = max(1, int(txn_megabytes * (1 << 20)))
    env, sources_env = _open_output(out_path, txn_bytes)
    pool = None
    try:
        stored, need_meta = _stored_keys(env, out_path, meta)
        with sources_env.begin() as txn:
            recorded = dict(txn.cursor().iternext())
        tasks, plan = [], {}  # plan: token -> (why it is packed: new | changed | unrecorded, its file record)
        for token in tokens:
            key, path = token.encode("utf-8"), images.get(token)
            if path is None:
                if key in stored:
                    report.gone.append(token)
                    report.skipped += 1
                else:
                    report.missing.append(token)
                continue
            try:
                record = file_record(path)
            except OSError as exc:  # gone between the listing and now, or a link to nothing
                report.unreadable[token] = f"{type(exc).__name__}: {exc}"
                continue
            if key not in stored:
                why = "new"
            elif recorded.get(key) == record:
                report.skipped += 1
                continue
            else:
                why = "unrecorded" if key not in recorded else "changed"
            tasks.append((token, path))
            plan[token] = (why, record)
        del stored, recorded
        log.info("%s: %d items, %d stored and unchanged, %d without a file, %d to pack", csv_file, len(tokens),
                 report.skipped, len(report.missing), len(tasks))

        workers = min(workers or os.cpu_count() or 1, max(1, len(tasks)))
        settings = (size, encoding, quality)
        if workers == 1:
            _init_worker(*settings)
            results = map(_encode, tasks)
        else:
            pool = multiprocessing.Pool(workers, initializer=_init_worker, initargs=settings)
            results = pool.imap(_encode, tasks, chunksize=max(1, min(32, len(tasks) // (workers * 8))))

        writer = _Writer(env, sources_env, txn_bytes, meta if need_meta else None)
        sources: dict[str, tuple[int, int]] = {}
        for token, value, source, error in results:
            why, record = plan[token]
            if error is not None:
                report.unreadable[token] = error
                if why != "new":  # its stored pixels are of a file that is no longer there in that form
                    writer.remove(token.encode("utf-8"))
                    report.removed.append(token)
                continue
            sources[token] = source
            before = writer.committed
            writer.put(token.encode("utf-8"), value, record, replaces=why != "new")
            setattr(report, why, getattr(report, why) + 1)
            if writer.committed != before:
                log.info("committed %d of %d covers to pack (%.0f/s)", writer.committed, len(tasks),
                         writer.committed / (time.perf_counter() - start))
        writer.flush()
        report.stored = writer.committed
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        env.close()
        sources_env.close()

    histogram = Counter(sources.values())
    if histogram:
        (common, _), = histogram.most_common(1)
        report.common_size = f"{common[0]}x{common[1]}"
        report.source_sizes = {f"{w}x{h}": n for (w, h), n in histogram.most_common()}
        report.odd_sized = {t: f"{w}x{h}" for t, (w, h) in sources.items() if (w, h) != common}
    report.seconds = time.perf_counter() - start
    report.save(out_path / "report.json")
    return report
