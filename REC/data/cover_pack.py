"""Write side of the covers database: item covers (JPEG/PNG/WebP files) -> one LMDB (layout: ``covers.py``).

``pack_covers`` is what ``generate_lmdb.py`` runs. Differences from the original builder, on purpose:
values are raw pixels or image-file bytes, never pickles; decoding and resizing run on every core; a failed
item gets no key (and is listed in ``report.json``) instead of a key list that names it; a rerun resumes,
skipping the items already stored, because writes are committed in bounded transactions.
The pixels are the original's: RGB, resized to exactly size x size with PIL bilinear (what torchvision's
``Resize((224, 224))`` does to a PIL image), stored HWC uint8 when ``encoding="raw"``.
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
    stored: int = 0                                      # covers written by this run
    skipped: int = 0                                     # items already in the database (earlier run)
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

        lines = [f"covers: {self.items:,} items in {self.csv_file} -> {self.output} "
                 f"({self.encoding}, {self.size}x{self.size}) in {self.seconds:.1f} s",
                 f"  stored now: {self.stored:,}; already stored (skipped): {self.skipped:,}; "
                 f"without a usable image: {len(self.missing) + len(self.unreadable):,}"]
        if self.missing:
            lines.append(f"  missing, no file in {self.images_dir} ({len(self.missing):,}): {first(self.missing)}")
        if self.unreadable:
            errors = {t: e[:120] for t, e in list(self.unreadable.items())[:SHOW]}
            lines.append(f"  unreadable ({len(self.unreadable):,}): {first(self.unreadable, errors)}")
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


def _encode(task: tuple[str, str]):
    """(token, file) -> (token, encoded bytes or None, (width, height) of the source or None, error or None)."""
    token, path = task
    size, encoding = _SETTINGS["size"], _SETTINGS["encoding"]
    try:
        with Image.open(path) as img:
            source = img.size
            rgb = img.convert("RGB")
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
class _Writer:
    """Buffers covers and commits them in transactions of about ``txn_bytes``, growing the map when full."""

    def __init__(self, env: lmdb.Environment, txn_bytes: int, meta: dict | None):
        self.env, self.txn_bytes = env, txn_bytes
        self.meta = meta  # written with the first transaction, then None
        self.pending: list[tuple[bytes, bytes]] = []
        self.pending_bytes = 0
        self.committed = 0

    def put(self, key: bytes, value: bytes) -> None:
        self.pending.append((key, value))
        self.pending_bytes += len(key) + len(value)
        if self.pending_bytes > self.txn_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.pending and self.meta is None:
            return
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    if self.meta is not None:
                        txn.put(META_KEY, json.dumps(self.meta).encode("utf-8"))
                    for key, value in self.pending:
                        txn.put(key, value)
                break
            except lmdb.MapFullError:  # the transaction was aborted; a bigger map and the same writes again
                info = self.env.info()
                used = (info["last_pgno"] + 1) * self.env.stat()["psize"]
                self.env.set_mapsize(max(2 * info["map_size"], used + 4 * self.pending_bytes))
        self.committed += len(self.pending)
        self.meta, self.pending, self.pending_bytes = None, [], 0


def _open_output(out_path: Path, txn_bytes: int) -> lmdb.Environment:
    if out_path.exists() and not out_path.is_dir():
        raise DataError(f"output {out_path} is a file; the covers database is a folder (choose another --output)")
    if out_path.is_dir() and not (out_path / "data.mdb").exists():
        strangers = [p.name for p in out_path.iterdir() if p.name not in ("lock.mdb", "report.json")][:5]
        if strangers:
            raise DataError(f"output {out_path} is a non-empty folder that is not a covers database "
                            f"(it holds {strangers}); choose another --output")
    out_path.mkdir(parents=True, exist_ok=True)
    existing = (out_path / "data.mdb").stat().st_size if (out_path / "data.mdb").exists() else 0
    # Room for a few transactions; _Writer doubles the map each time it fills up (a few times over a whole pack).
    map_size = 2 * existing + 4 * txn_bytes + (1 << 20)
    return lmdb.open(str(out_path), subdir=True, map_size=map_size, readonly=False, meminit=False)


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


# ------------------------------------------------------------------------------------------------ main entry
def pack_covers(csv_file, images_dir, out_path, size: int = 224, encoding: str = "raw", quality: int = 95,
                workers: int | None = None, txn_megabytes: float = 256,
                extensions=("jpg", "jpeg", "png", "webp")) -> PackReport:
    """Pack ``<images_dir>/<item_id>.<ext>`` for every distinct ``item_id`` of ``csv_file`` into ``out_path``.

    Resumes: items already in ``out_path`` are skipped. Items with no file or an unreadable one get no key and
    are listed in the returned report (also written to ``out_path/report.json``); nothing here raises on a bad
    image. Raises DataError for an unusable CSV, covers folder or output.
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
    env = _open_output(out_path, txn_bytes)
    pool = None
    try:
        stored, need_meta = _stored_keys(env, out_path, meta)
        tasks = []
        for token in tokens:
            if token.encode("utf-8") in stored:
                report.skipped += 1
            elif token in images:
                tasks.append((token, images[token]))
            else:
                report.missing.append(token)
        del stored
        log.info("%s: %d items, %d already stored, %d without a file, %d to pack", csv_file, len(tokens),
                 report.skipped, len(report.missing), len(tasks))

        workers = min(workers or os.cpu_count() or 1, max(1, len(tasks)))
        settings = (size, encoding, quality)
        if workers == 1:
            _init_worker(*settings)
            results = map(_encode, tasks)
        else:
            pool = multiprocessing.Pool(workers, initializer=_init_worker, initargs=settings)
            results = pool.imap(_encode, tasks, chunksize=max(1, min(32, len(tasks) // (workers * 8))))

        writer = _Writer(env, txn_bytes, meta if need_meta else None)
        sources: dict[str, tuple[int, int]] = {}
        for token, value, source, error in results:
            if error is not None:
                report.unreadable[token] = error
                continue
            sources[token] = source
            before = writer.committed
            writer.put(token.encode("utf-8"), value)
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

    histogram = Counter(sources.values())
    if histogram:
        (common, _), = histogram.most_common(1)
        report.common_size = f"{common[0]}x{common[1]}"
        report.source_sizes = {f"{w}x{h}": n for (w, h), n in histogram.most_common()}
        report.odd_sized = {t: f"{w}x{h}" for t, (w, h) in sources.items() if (w, h) != common}
    report.seconds = time.perf_counter() - start
    report.save(out_path / "report.json")
    return report
