"""Top-k recommendations from a finished run, in the original ids of the dataset's CSV.

    python -m REC predict runs/SASRec-Beauty-... --output recs.csv [--users users.txt] [--topk 10]

A user's input is their whole known history: every interaction of the CSV, so what comes after the test item
is the next recommendation. The model reads the last M (``MAX_ITEM_LIST_LENGTH``) items, as at evaluation, and
the history is masked unless ``--keep_history``. The same from Python::

    rec = Recommender.from_run("runs/SASRec-Beauty-...")
    rec.recommend(["B0001", "B0042"], k=10)        # [(item id, score), ...], best first
    rec.recommend_users(["A2X..."], k=10)          # DataFrame user_id, rank, item_id, score

PixelNet runs encode every item's cover once; ``save_item_representations`` keeps that table (``.npy`` plus
an id list) so that serving can skip the encoding (``from_run(..., item_representations=path)``).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import torch

from ..data import EvalBatches, EvalSplit
from ..data.cover_batches import ItemCoverBatches, cover_lmdb_path
from ..data.covers import CoverStore
from ..evaluator.ranking import score_batches, top_unmasked
from ..utils.precision import autocast
from ..data.item_array import ItemArrayError, ItemArrayFile, ItemIdentity, read_json
from ..utils.files import atomic_output, sidecar
from ..utils.integrity import DamagedFileError, npy_layout, verify_file
from ..distributed import one_device
from .loaded_run import load_run
from ..utils.errors import UserError
from ..utils.run_layout import BEST_CHECKPOINT
from ..utils.batch_keys import HIST_ITEM, HIST_ROW

SHOWN = 5  # unknown ids quoted in an error message
TABLE_KIND, TABLE_CHUNK = "item-table", 4096  # saved item tables: kind, and items per CRC-32
log = logging.getLogger(__name__)


class PredictError(UserError, ValueError):
    """predict cannot do what was asked of this run (its model, its item representations, the given ids)."""


class UnknownIdError(PredictError):
    """Ids that the run's dataset does not hold; the message gives their count and the first few."""


class KnownUsersOnlyError(UserError, RuntimeError):
    """The model scores users by a learned per-user vector, so it cannot score a bare history."""


def _unknown(kind: str, missing: list[str], total: int, where: str) -> UnknownIdError:
    first = ", ".join(repr(m) for m in missing[:SHOWN])
    return UnknownIdError(f"{len(missing)} of the {total} {kind} ids given are not in {where}: {first}"
                          f"{', ...' if len(missing) > SHOWN else ''}")


def _legacy_table(npy: Path, txt: Path, item_ids: list[str], redo: str) -> np.ndarray:
    """A table saved before the shared per-item file type: its ids in ``txt`` compared with the run's, its bytes
    with the whole-file checksum record in its ``.json`` (tables saved by hand have none)."""
    if not txt.is_file():
        raise ItemArrayError(f"{npy} has neither a description ({sidecar(npy, 'json').name}) nor an id list "
                             f"({txt.name}): which items its rows are cannot be checked")
    npy_layout(npy, dtype=np.float32)
    meta_path = sidecar(npy, "json")
    if meta_path.is_file():
        record = read_json(meta_path)
        if record is None or "checksum" not in record:
            raise DamagedFileError(meta_path, "its checksum record cannot be read")
        verify_file(npy, record["checksum"], redo)
    else:
        log.warning("item representations: %s has no checksum record beside it (%s): its bytes cannot be checked",
                    npy, meta_path.name)
    saved_ids = txt.read_text(encoding="utf-8").split("\n")[:-1]
    table = np.load(npy, allow_pickle=False)
    if table.ndim != 2 or table.shape[0] != len(saved_ids):
        raise ItemArrayError(f"{npy}: shape {table.shape} does not match the {len(saved_ids)} ids of {txt}")
    if saved_ids != item_ids:
        diff = sum(a != b for a, b in zip(saved_ids, item_ids)) + abs(len(saved_ids) - len(item_ids))
        raise ItemArrayError(f"{txt}: {len(saved_ids)} rows, but the run's dataset has {len(item_ids)} items "
                             f"(padding row included) and {diff} rows differ; the table was saved from another "
                             f"dataset or another version of it")
    return table


def _table_files(path: str | Path) -> tuple[Path, Path]:
    """``x`` or ``x.npy`` -> the table ``x.npy`` and its row ids ``x.items.txt``, named as every array's sidecars
    are (``REC.utils.files.sidecar``)."""
    path = Path(path)
    npy = path if path.suffix == ".npy" else path.with_name(path.name + ".npy")
    return npy, sidecar(npy, "items.txt")


class Recommender:
    """A trained model with its dataset's id maps, ranking every item for a batch of histories at a time."""

    def __init__(self, config, model, inter, device: torch.device, precision: str, cover_table=None,
                 data_check=None):
        self.config, self.model, self.inter = config, model.eval(), inter
        self.device, self.precision = device, precision
        self.max_len = config["MAX_ITEM_LIST_LENGTH"]
        self.item_num = inter.item_num
        self.item_ids = np.array(inter.item_tokens.to_list(), dtype=object)  # internal id -> original id
        self._cover_table = cover_table
        self._items = self._table_on_device = None
        self._item_index = self._user_index = None
        # sequence row of each internal user id (-1: a user of the run without interactions in today's CSV)
        self._row_of_user = np.full(inter.user_num, -1, dtype=np.int64)
        self._row_of_user[inter.users] = np.arange(len(inter.users))
        self.data_check = data_check  # how today's CSV compares with the run's (REC.data.DataCheck)

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = BEST_CHECKPOINT, device: str | torch.device = "cpu",
                 precision: str | None = None, item_representations: str | Path | None = None) -> "Recommender":
        """Load ``config.yaml`` and ``checkpoint`` of a run directory and the data (from its cache).

        ``precision``: fp32, bf16 or fp16 autocast for the forward passes; None takes the run's. Scores are
        always computed in fp32. ``item_representations``: a table written by ``save_item_representations``
        (PixelNet), used instead of encoding every cover again.
        """
        if not checkpoint:  # load_run would leave the weights as built: recommendations from an untrained model
            raise PredictError(f"checkpoint: expected a checkpoint file of the run ({BEST_CHECKPOINT} or its "
                               f"last.pth), got {checkpoint!r}")
        device = one_device(device) if isinstance(device, str) else torch.device(device)
        run = load_run(run_dir, device, checkpoint)  # the run's own ids, whatever the CSV's row order
        config, model, inter = run.config, run.model, run.inter
        precision = precision or config["precision"]
        table = None
        if item_representations is not None:
            if not model.encodes_covers:
                raise PredictError(f"item_representations: model {config['model']} reads its items from the "
                                 f"checkpoint, not from covers; there is nothing to load")
            table = cls.load_item_table(item_representations, inter.item_tokens, model.cover_width,
                                        config["dataset"])
        return cls(config, model, inter, device, precision, table, run.data_check)

    @staticmethod
    def load_item_table(path: str | Path, tokens, width: int, dataset: str = "") -> torch.Tensor:
        """A saved [item_num, d] table, checked against the run's items (``tokens``: the same ids in the same rows),
        its bytes against their CRC-32s, and its width. Tables saved before the shared per-item file type (an
        ``.items.txt`` id list, a whole-file checksum record) are checked by their ids."""
        npy, txt = _table_files(path)
        redo = "save it again (REC.app.predict --save_items)"
        if not npy.is_file():
            raise FileNotFoundError(f"item representations: {npy} does not exist (save_item_representations "
                                    f"writes <path>.npy, <path>.json and <path>.items.txt)")
        try:
            found = ItemArrayFile.on_disk(npy)
            if found is not None:
                if found.kind != TABLE_KIND:
                    raise ItemArrayError(f"{npy} holds {found.kind}, not an item table saved by REC.app.predict")
                found.check_items(ItemIdentity.of(dataset, tokens), redo)
                table = found.array(redo)
            else:
                table = _legacy_table(npy, txt, tokens.to_list(), redo)
        except (ItemArrayError, DamagedFileError) as exc:
            raise PredictError(f"item representations: {exc}" + ("" if redo in str(exc) else f"; {redo}")) from None
        if table.ndim != 2 or table.shape[1] != width:
            raise PredictError(f"{npy}: rows of shape {list(table.shape[1:])}, but the model's items have width "
                               f"{width}")
        return torch.from_numpy(np.asarray(table, dtype=np.float32))

    # --------------------------------------------------------------------------------------------- items
    @contextlib.contextmanager
    def _ranking_scope(self):
        """Yields [item_num(, ...)] every item's representation, computed on first use. PixelNet: the covers are
        encoded once, and the table is lent to the model only inside this scope (its lookups index it)."""
        with torch.no_grad(), contextlib.ExitStack() as scope:
            if self.model.encodes_covers:
                if self._cover_table is None:
                    self._cover_table = self._encode_covers().cpu()
                if self._table_on_device is None:
                    self._table_on_device = self._cover_table.to(self.device)
                with autocast(self.device, self.precision):  # the mask token's image is encoded on entry
                    scope.enter_context(self.model.cover_table(self._table_on_device))
            if self._items is None:
                with autocast(self.device, self.precision):
                    self._items = self.model.item_representations().float()
            yield self._items

    def _encode_covers(self) -> torch.Tensor:
        """[item_num, d] float32, row 0 (padding) zero: every item's cover encoded in this one process."""
        config = self.config
        store = CoverStore(cover_lmdb_path(config), self.inter.item_tokens)
        covers = ItemCoverBatches(store, self.item_num, config["cover_batch_size"])
        was_training = self.model.training
        self.model.eval()
        try:
            rows = self.model.encode_item_batches(covers, self.device, self.precision, config["num_workers"])
        finally:
            self.model.train(was_training)
        return torch.cat([torch.zeros(1, rows.shape[1], device=rows.device), rows])

    def save_item_representations(self, path: str | Path) -> Path:
        """PixelNet: write ``<path>.npy`` (float32 [item_num, d], row 0 padding) as a per-item array file
        (``REC.data.item_array``: ``<path>.json`` says which dataset's items its rows are, ``<path>.items.txt``
        the original id of each row, ``[PAD]`` first); returns the ``.npy`` path."""
        if not self.model.encodes_covers:
            raise PredictError(f"model {self.config['model']} reads its items from the checkpoint, not from covers; "
                             f"only PixelNet runs have item representations to save")
        with self._ranking_scope():  # encodes the covers when not done yet
            pass
        npy, _ = _table_files(path)
        rows = self._cover_table.float().numpy()
        table = ItemArrayFile(npy, ItemIdentity.of(self.config["dataset"], self.inter.item_tokens), TABLE_KIND,
                              rows.shape[1:], "float32", TABLE_CHUNK,
                              settings={"model": self.config["model"], "encoder": self.config["encoder"]},
                              room_hint="choose another --save_items path")
        table.create(restart=True, rebuild=True)
        try:
            for c in table.pending():
                items = table.chunk_items(c)
                table.write(c, rows[items[0]:items[-1] + 1])
        except BaseException:
            table.release()
            raise
        table.finish(self.inter.item_tokens)  # still holding the lock; finish releases it
        return npy

    # -------------------------------------------------------------------------------------------- ids
    def item_index(self, history: Iterable[str]) -> tuple[np.ndarray, list[str]]:
        """Original item ids -> the run's internal ids, and the ids the run never saw (left out: the model has no
        row for them)."""
        if self._item_index is None:
            self._item_index = {t: i for i, t in enumerate(self.item_ids) if i > 0}
        history = [str(h) for h in history]
        known = [self._item_index[h] for h in history if h in self._item_index]
        return np.array(known, dtype=np.int64), [h for h in history if h not in self._item_index]

    def user_index(self, user_ids: Iterable[str]) -> np.ndarray:
        """Original user ids -> internal ids; UnknownIdError names those the dataset does not hold."""
        if self._user_index is None:  # users of the run with interactions in the CSV
            tokens = self.inter.user_tokens.to_list()
            self._user_index = {tokens[u]: int(u) for u in self.inter.users}
        user_ids = [str(u) for u in user_ids]
        missing = [u for u in user_ids if u not in self._user_index]
        if missing:
            raise _unknown("user", missing, len(user_ids), f"dataset {self.config['dataset']!r}")
        return np.array([self._user_index[u] for u in user_ids], dtype=np.int64)

    # ------------------------------------------------------------------------------------------ ranking
    def _full_histories(self, users: np.ndarray) -> EvalSplit:
        """The whole sequence of each internal user id, as an EvalSplit without targets."""
        rows = self._row_of_user[users]
        starts, lengths = self.inter.indptr[rows], np.diff(self.inter.indptr)[rows]
        return EvalSplit(users.astype(np.int64), np.zeros(len(rows), dtype=np.int64), starts, lengths,
                         self.inter.items)  # slices of the interactions, not a copy

    @torch.no_grad()
    def rank(self, split: EvalSplit, k: int, exclude_history: bool = True, batch_size: int = 1024,
             progress=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Per batch of users: (internal item ids [B, k], scores [B, k]), best first, as the evaluator ranks
        (same batches, same masking). Padding never appears; a masked item has score -inf."""
        k = max(1, min(k, self.item_num - 1))
        with self._ranking_scope() as items:
            batches = EvalBatches(split, self.max_len, batch_size)
            for batch, scores in score_batches(self.model, items, batches, self.device, self.precision):
                history = (batch[HIST_ROW], batch[HIST_ITEM]) if exclude_history else (None, None)
                ids, values, ranked = top_unmasked(scores, k, *history)
                if progress is not None:
                    progress.update(len(scores))
                del scores, batch  # before the next batch is scored: one [B, items] matrix alive, not two
                yield ids.cpu().numpy(), values.masked_fill(~ranked, -torch.inf).cpu().numpy()

    def recommend_histories(self, histories: list[list[str]], k: int = 10, exclude_history: bool = True,
                            batch_size: int = 1024) -> list[list[tuple[str, float]]]:
        """``recommend`` for many histories at once, in batches."""
        if self.model.needs_user_id:
            raise KnownUsersOnlyError(
                f"model {self.config['model']} scores known users only (its user vector is learned per user id), "
                f"so it cannot rank items for a given history; use recommend_users(user_ids) instead")
        empty = [n for n, h in enumerate(histories) if len(h) == 0]
        if empty:
            raise PredictError(f"{len(empty)} of the {len(histories)} histories are empty (e.g. number {empty[0]}); "
                             f"give at least one item id")
        encoded, unknown = zip(*(self.item_index(h) for h in histories))
        missing = [m for ms in unknown for m in ms]
        hopeless = [n for n, h in enumerate(encoded) if len(h) == 0]
        if hopeless:
            raise _unknown("item", missing, sum(map(len, histories)), f"run's vocabulary (dataset "
                           f"{self.config['dataset']!r}); {len(hopeless)} histories hold no known item (e.g. number "
                           f"{hopeless[0]})")
        if missing:
            first = ", ".join(repr(m) for m in missing[:SHOWN])
            log.warning("%d of the %d item ids of the histories are unknown to the run and were left out: %s%s",
                        len(missing), sum(map(len, histories)), first, ", ..." if len(missing) > SHOWN else "")
        lengths = np.array([len(h) for h in encoded], dtype=np.int64)
        indptr = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        # user 0 is the padding user: only its count is read, by models that need no user vector
        split = EvalSplit.from_csr(np.zeros(len(encoded), dtype=np.int64), np.zeros(len(encoded), dtype=np.int64),
                                   indptr, np.concatenate(encoded))
        out = []
        for ids, scores in self.rank(split, k, exclude_history, batch_size):
            for row_ids, row_scores in zip(ids, scores):
                keep = np.isfinite(row_scores)
                out.append([(self.item_ids[i], float(s)) for i, s in zip(row_ids[keep], row_scores[keep])])
        return out

    def recommend(self, history: list[str], k: int = 10, exclude_history: bool = True) -> list[tuple[str, float]]:
        """Top-k (original item id, score) after ``history`` (original item ids, oldest first), best first.
        Items of the history are left out unless ``exclude_history`` is False."""
        return self.recommend_histories([list(history)], k, exclude_history)[0]

    def iter_user_rows(self, users: np.ndarray, k: int, exclude_history: bool = True, batch_size: int = 1024,
                       chunk_users: int = 65536, progress=None) -> Iterator[list[tuple[str, int, str, float]]]:
        """Per batch of internal user ids (their whole history as input): (user id, rank, item id, score) rows in
        original ids. Users are taken ``chunk_users`` at a time so the model inputs of millions of users are
        never built at once."""
        user_tokens = self.inter.user_tokens
        for a in range(0, len(users), chunk_users):
            chunk = users[a:a + chunk_users]
            done = 0
            for ids, scores in self.rank(self._full_histories(chunk), k, exclude_history, batch_size, progress):
                rows = []
                for u, row_ids, row_scores in zip(chunk[done:done + len(ids)], ids, scores):
                    token = user_tokens[int(u)]
                    keep = np.isfinite(row_scores)
                    rows.extend((token, r, self.item_ids[i], float(s))
                                for r, (i, s) in enumerate(zip(row_ids[keep], row_scores[keep]), 1))
                done += len(ids)
                yield rows

    def all_users(self) -> np.ndarray:
        """Every internal user id with interactions in the CSV, in the run's order (first line in its CSV)."""
        return np.sort(self.inter.users)

    def recommend_users(self, user_ids: list[str], k: int = 10, exclude_history: bool = True,
                        batch_size: int = 1024) -> pd.DataFrame:
        """Top-k for known users (original ids), each from their whole history: columns user_id, rank,
        item_id, score; k rows per user unless fewer items are left unmasked."""
        users = self.user_index(user_ids)
        rows = [r for part in self.iter_user_rows(users, k, exclude_history, batch_size) for r in part]
        return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score"])


# ---------------------------------------------------------------------------------------------- command
def read_user_file(path: str | Path) -> list[str]:
    """One original user id per line; blank lines are skipped and repeats dropped (first kept)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PredictError(f"--users {str(path)!r}: not UTF-8 text; expected one user id per line") from None
    return list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))


def check_writable_folder(option: str, path: str | Path) -> None:
    """The folder ``path`` will be written into must exist and take files: checked before any scoring, which may
    take hours, rather than at the rename that ends it."""
    if Path(path).is_dir():
        raise IsADirectoryError(f"{option} {str(path)!r} is a folder; name the file to write, e.g. "
                                f"{os.path.join(str(path), 'recs.csv')!r}")
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{option} {str(path)!r}: folder {str(folder)!r} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {str(path)!r}: folder {str(folder)!r} is not writable")


def write_recommendations(path: str | Path, row_batches: Iterable[list[tuple]]) -> int:
    """CSV ``user_id,rank,item_id,score``, written atomically (``atomic_output``); returns the number of rows."""
    n = 0
    with atomic_output(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["user_id", "rank", "item_id", "score"])
        for rows in row_batches:
            writer.writerows((u, r, i, f"{s:.7g}") for u, r, i, s in rows)
            n += len(rows)
    return n


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m REC predict", description=__doc__.splitlines()[0],
                                epilog="Exit status 2: a bad argument, run directory or user id; nothing is written.")
    p.add_argument("run_dir", help="a run directory made by main.py (holds config.yaml and the checkpoints)")
    p.add_argument("--output", default="recs.csv",
                   help="CSV to write (user_id,rank,item_id,score), replaced atomically when complete")
    p.add_argument("--users", metavar="FILE",
                   help="only these users: one original user id per line (default: every user of the dataset)")
    p.add_argument("--topk", type=int, default=10, help="items per user")
    p.add_argument("--keep_history", action="store_true",
                   help="do not mask the items the user already interacted with (masked by default)")
    p.add_argument("--checkpoint", default=BEST_CHECKPOINT, help="checkpoint file in the run directory")
    p.add_argument("--device", default="cpu", help="cpu, or one GPU id such as 0 (the launcher's grammar; cuda and "
                   "cuda:N also work)")
    p.add_argument("--batch_size", type=int, default=1024, help="users scored per batch")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None,
                   help="autocast dtype of the forward passes (scores are fp32); default: the run's precision")
    p.add_argument("--save_items", metavar="PATH.npy",
                   help="PixelNet: also save every item's encoded cover as PATH.npy and PATH.items.txt, to be "
                        "loaded with Recommender.from_run(..., item_representations=PATH)")
    args = p.parse_args(argv)
    if args.topk < 1:
        p.error("--topk must be at least 1")
    if args.batch_size < 1:
        p.error("--batch_size must be at least 1")
    return args


def main(argv=None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    try:
        if args.users is not None and (not Path(args.users).exists() or Path(args.users).is_dir()):
            raise PredictError(f"--users {args.users!r}: no such file")
        for option, path in (("--output", args.output), ("--save_items", args.save_items)):
            if path is not None:
                check_writable_folder(option, path)
        rec = Recommender.from_run(args.run_dir, args.checkpoint, args.device, args.precision)
        if args.users is None:
            users = rec.all_users()
        else:
            wanted = read_user_file(args.users)
            if not wanted:
                raise PredictError(f"--users {args.users!r}: the file lists no user id")
            users = rec.user_index(wanted)
        if args.save_items:
            npy = rec.save_item_representations(args.save_items)
            print(f"item representations: {npy}", file=sys.stderr)
    except (UserError, OSError) as exc:  # OSError: the files named on the command line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tqdm(total=len(users), unit="user", desc="predict", file=sys.stderr) as bar:
        n = write_recommendations(args.output, rec.iter_user_rows(users, args.topk, not args.keep_history,
                                                                  args.batch_size, progress=bar))
    print(f"{n} rows for {len(users)} users written to {args.output}", file=sys.stderr)
    return 0
