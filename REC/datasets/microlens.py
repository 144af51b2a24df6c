"""MicroLens pairs file + cover folder -> PixelRec's layout:

    python -m REC import --pairs MicroLens-100K_pairs.tsv --covers <folder> --out dataset/

MicroLens ships sequences, one user per line (``user<TAB>item item item ...``, items in time order), and no
timestamps; PixelRec reads ``<data_path>/<dataset>.csv`` (``item_id,user_id,timestamp``) and orders each user's
items by timestamp. Writing a user's k-th item (k from 0) with timestamp k makes that order exactly the file's.
Covers are linked (or copied) into ``<out>/cover/``, the folder ``generate_lmdb.py`` reads by default, so the
packer needs no extra option and the images are not duplicated.

Files it did not make are never overwritten, replaced or deleted. ``<out>`` is often a folder shared with other
datasets (the README's ``--out dataset/``), whose covers are also ``<item_id>.jpg`` with numeric ids, so ids
collide. Before anything is written, every item's cover path is checked: a free path gets a link (or a copy); a
link to the same source file (this importer's, from an earlier run) is kept, or with ``--copy`` replaced by a copy
of the file it points at, which loses nothing; a file with the same bytes as the source is left as it is (and
counted in the summary); any other file there, or another cover file of the same item (``10.png`` beside
``10.jpg``: ``generate_lmdb.py`` would pack only one of them), is a collision: exit 2 naming the paths, and nothing
is written. Likewise ``<out>/<name>.csv`` is replaced only when ``<out>/<name>_missing_covers.txt`` beside it
shows that an earlier import wrote it.

The pairs file is read as UTF-8; a leading byte-order mark (Windows editors write one) is dropped, not read as
part of the first user id.

Exit status: 0 every item of the CSV has a cover; 1 some items have none (listed in
``<out>/<name>_missing_covers.txt``; the CSV is written with their interactions; ``--drop_missing`` removes them);
2 bad arguments, an unreadable pairs file, covers folder or output, or a collision with a file this importer did
not make (nothing is written then).
"""
from __future__ import annotations

import argparse
import codecs
import filecmp
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.cover_pack import find_images
from ..data.interactions import COLUMNS, DataError
from ..utils.files import atomic_output, write_text_atomic

COVER_DIR = "cover"                                  # generate_lmdb.py's default --covers_dir
EXTENSIONS = ("jpg", "jpeg", "png", "webp")          # what generate_lmdb.py packs, in its order of preference
ROW_FORMAT = "user<TAB>item item ... (a user id, one tab, item ids separated by spaces)"
SHOW = 10
_DIGIT = re.compile(r"\d")


# ------------------------------------------------------------------------------------------------ pairs file
def read_pairs(path, header: str = "auto") -> tuple[pd.DataFrame, bool]:
    """One row per interaction, ``user_id`` and ``item_id`` as strings, in file order; and whether a header was
    skipped.

    ``header="auto"`` treats the first non-empty line as a header when it holds no digit at all (``user\\titem``,
    ``user_id\\titem_sequence``): MicroLens ids are numbers, so a data row always has one. Datasets with ids made
    of letters only need ``header="no"`` (or ``"yes"``) to say which it is.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"pairs file {path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"pairs file {path} is a folder; expected the MicroLens *_pairs.tsv file") from None
    # Kept, a byte-order mark would start the first user id, making that user two users. Stripped here rather than
    # by "utf-8-sig", whose error offsets would not count the mark's 3 bytes.
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = bom + exc.start
        line = data[:byte].count(b"\n") + 1
        raise DataError(f"{path}: not UTF-8 (byte {byte}, line {line})") from None
    del data
    # split on "\n" only, so that line numbers are the ones an editor shows
    lines = pd.Series(text.split("\n"), dtype=object).str.rstrip("\r")
    del text
    number = np.arange(1, len(lines) + 1)
    keep = (lines.str.strip() != "").to_numpy()
    lines, number = lines[keep].reset_index(drop=True), number[keep]
    skipped_header = False
    if len(lines) and (header == "yes" or (header == "auto" and not _DIGIT.search(lines.iloc[0]))):
        lines, number, skipped_header = lines.iloc[1:].reset_index(drop=True), number[1:], True
    if not len(lines):
        raise DataError(f"{path}: no data rows{' after the header' if skipped_header else ''}; expected {ROW_FORMAT}")

    parts = lines.str.split("\t", n=1, expand=True).reindex(columns=[0, 1]).astype(object).fillna("")
    users, items = parts[0].str.strip(" "), parts[1].str.strip(" ")
    problems = [
        (lines.str.count("\t").to_numpy() != 1, "expected exactly one tab between the user and the items"),
        ((users == "").to_numpy(), "empty user id"),
        (users.str.contains(r"\s", regex=True).to_numpy(), "the user id contains whitespace"),
        ((items == "").to_numpy(), "no items after the tab"),
    ]
    bad = np.zeros(len(lines), dtype=bool)
    for mask, _ in problems:
        bad |= mask
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        why = next(reason for mask, reason in problems if mask[first])
        row = lines.iloc[first]
        shown = repr(row if len(row) <= 80 else row[:80] + "...")
        more = f" ({int(bad.sum()):,} malformed lines in all)" if bad.sum() > 1 else ""
        raise DataError(f"{path}, line {number[first]}: {why} in {shown}; expected {ROW_FORMAT}{more}")

    frame = pd.DataFrame({"user_id": users.to_numpy(), "item_id": items.str.split().to_numpy()})
    frame = frame.explode("item_id", ignore_index=True)
    return frame[["user_id", "item_id"]], skipped_header


def with_timestamps(frame: pd.DataFrame) -> pd.DataFrame:
    """PixelRec's CSV: a user's k-th interaction in file order (k from 0) has timestamp k. A user on several
    lines continues counting, so the lines read as one sequence in file order."""
    out = frame[["item_id", "user_id"]].copy()
    out["timestamp"] = frame.groupby("user_id", sort=False).cumcount().to_numpy(dtype=np.int64)
    return out[list(COLUMNS)]


# ------------------------------------------------------------------------------------------------ covers
@dataclass
class CoverResult:
    linked: int = 0                                  # links or copies made by this run
    kept: int = 0                                    # already in place: this importer's link, or the same bytes
    foreign: int = 0                                 # ... of which files it did not make (same bytes), left alone
    missing: list = field(default_factory=list)      # item ids with no image in the covers folder
    in_place: bool = False                           # --covers is <out>/cover itself: nothing to link
    todo: list = field(default_factory=list)         # (source, target) still to make; see place_covers


def plan_covers(items, covers_dir, cover_out, copy: bool = False) -> CoverResult:
    """What ``place_covers`` will do for each item with an image in ``covers_dir`` (the rest are ``missing``),
    found before anything is written; a DataError naming every collision (module docstring) when a cover path
    holds a file this importer must not replace."""
    images = find_images(covers_dir, EXTENSIONS)
    result = CoverResult()
    have = pd.Index(items).isin(list(images))
    result.missing = [t for t, ok in zip(items, have) if not ok]
    covers_dir, cover_out = Path(covers_dir), Path(cover_out)
    if cover_out.exists() and cover_out.resolve() == covers_dir.resolve():
        # linking a folder onto itself would replace every image with a link to itself
        result.in_place, result.kept = True, int(have.sum())
        return result
    present = _cover_names(cover_out)
    collisions = []
    for item in pd.Index(items)[have]:
        source = os.path.abspath(images[item])
        target = cover_out / os.path.basename(source)
        names = present.get(item, [])
        others = [n for n in names if n != target.name]
        if others:
            collisions.append(f"{cover_out / others[0]} is another cover of item {item}")
        elif not names:
            result.todo.append((source, target))
        elif _links_to(target, source):
            if copy:  # the link only points at the bytes about to be copied: nothing is lost
                result.todo.append((source, target))
            else:
                result.kept += 1
        elif target.is_file() and filecmp.cmp(source, target, shallow=False):
            result.kept += 1
            result.foreign += target.is_symlink() or not copy  # in copy mode a plain file may be an earlier copy
        else:
            collisions.append(f"{target} is not {source} (a different file, or a link to one)")
    if collisions:
        shown = "; ".join(collisions[:SHOW]) + ("; ..." if len(collisions) > SHOW else "")
        files = f"{len(collisions):,} file{'s' if len(collisions) > 1 else ''}"
        raise DataError(f"{cover_out} already holds {files} that this importer did not make, and it never replaces "
                        f"one: {shown}. Nothing was written; import into another folder (--out), or move those files "
                        f"away")
    return result


def _links_to(target: Path, source: str) -> bool:
    return target.is_symlink() and os.path.realpath(target) == os.path.realpath(source)


def _cover_names(folder: Path) -> dict[str, list[str]]:
    """``{item: [names]}`` of what ``generate_lmdb.py`` would take for a cover in ``folder`` (any type of entry,
    a dangling link included, since a name taken is a name taken)."""
    extensions = {e.lower() for e in EXTENSIONS}
    names: dict[str, list[str]] = {}
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                stem, dot, ext = entry.name.rpartition(".")
                if dot and ext.lower() in extensions:
                    names.setdefault(stem, []).append(entry.name)
    except FileNotFoundError:
        pass
    except NotADirectoryError:
        raise DataError(f"{folder} is a file; the covers go into a folder of that name") from None
    return names


def place_covers(plan: CoverResult, cover_out, copy: bool = False) -> CoverResult:
    """Make the links (or copies) ``plan_covers`` found missing. Each goes through a temporary name, so an
    interrupted run never leaves a half-copied image under a cover's name."""
    if not plan.todo:
        return plan
    cover_out = Path(cover_out)
    try:
        cover_out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the cover folder {cover_out}: {exc}") from None
    for source, target in plan.todo:
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            if not copy:  # the path was free: symlink() refuses, where a rename would replace, what came since
                os.symlink(source, target)
            else:
                shutil.copyfile(source, tmp)
                if os.path.lexists(target) and not _links_to(target, source):
                    raise FileExistsError(f"{target} appeared during the import; it is left as it is")
                os.replace(tmp, target)
        except OSError as exc:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            raise DataError(f"cannot {'copy' if copy else 'link'} {source} to {target}: {exc}") from None
        plan.linked += 1
    plan.todo = []
    return plan


def check_csv_is_ours(csv_file: Path, missing_file: Path) -> None:
    """Every import writes ``missing_file`` with the CSV; a CSV without it was written by someone else."""
    if os.path.lexists(csv_file) and not os.path.lexists(missing_file):
        raise DataError(f"{csv_file} already exists and was not written by this importer (no {missing_file.name} "
                        f"beside it), and it never replaces it; nothing was written. Choose another --name or --out")


# ------------------------------------------------------------------------------------------------ command
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m REC import", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", required=True, help="MicroLens pairs file, e.g. MicroLens-100K_pairs.tsv")
    p.add_argument("--covers", required=True, help="folder of covers named <item_id>.jpg (.jpeg, .png, .webp; "
                   "any case)")
    p.add_argument("--out", default="dataset/", help="data folder to write: <out>/<name>.csv and <out>/cover/ "
                     "(default: dataset/)")
    p.add_argument("--name", default="MicroLens100K", help="dataset name, the CSV's name without .csv "
                   "(default: MicroLens100K)")
    p.add_argument("--copy", action="store_true", help="copy the covers instead of symlinking them")
    p.add_argument("--drop_missing", action="store_true", help="remove the interactions of items without a cover "
                   "(default: keep them, list the items and exit 1; PixelNet needs every cover)")
    p.add_argument("--header", choices=("auto", "yes", "no"), default="auto", help="is the first non-empty line "
                   "a header? auto: yes when it holds no digit, e.g. user<TAB>item (default: auto)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    csv_file, missing_file = out / f"{args.name}.csv", out / f"{args.name}_missing_covers.txt"
    try:
        frame, skipped_header = read_pairs(args.pairs, args.header)
        items = pd.unique(frame["item_id"]).tolist()
        covers = plan_covers(items, args.covers, out / COVER_DIR, copy=args.copy)
        check_csv_is_ours(csv_file, missing_file)
        # everything is checked: only now is anything written (<out>/cover, hence <out>, first)
        place_covers(covers, out / COVER_DIR, copy=args.copy)
        n_read, users_read = len(frame), frame["user_id"].nunique()
        if args.drop_missing and covers.missing:
            frame = frame[~frame["item_id"].isin(covers.missing)]
        table = with_timestamps(frame)
        try:
            out.mkdir(parents=True, exist_ok=True)  # place_covers made it, unless there was nothing to link
        except OSError as exc:
            raise DataError(f"cannot create the output folder {out}: {exc}") from None
        # the list before the CSV: a kill between them must not leave a CSV that a rerun takes for someone else's
        write_text_atomic(missing_file, "".join(f"{t}\n" for t in covers.missing))
        with atomic_output(csv_file, "w", encoding="utf-8", newline="") as f:
            table.to_csv(f, index=False)
    except DataError as exc:
        print(f"microlens: error: {exc}", file=sys.stderr)
        return 2

    n_users, n_items = table["user_id"].nunique(), table["item_id"].nunique()
    short = int((table.groupby("user_id", sort=False).size() < 3).sum())
    print(f"{args.pairs}{' (header line skipped)' if skipped_header else ''} -> {csv_file}")
    print(f"  users: {n_users:,}; items: {n_items:,}; interactions: {len(table):,} (timestamp = position in the "
          f"user's row, from 0)")
    if short:
        print(f"  users with fewer than 3 interactions (left out of validation and test): {short:,}")
    verb = "copied" if args.copy else "linked"
    place = f"already in {args.covers}" if covers.in_place else f"{verb} now {covers.linked:,}, already there " \
                                                                f"{covers.kept:,}"
    if covers.foreign:
        place += (f"; {covers.foreign:,} of these are files this importer did not make, with the same bytes as the "
                  f"source, left as they are")
    print(f"  covers in {out / COVER_DIR}: {covers.linked + covers.kept:,} ({place})")
    shown = ", ".join(covers.missing[:SHOW]) + (", ..." if len(covers.missing) > SHOW else "")
    print(f"  missing covers: {len(covers.missing):,}" + (f" ({shown}; all in {missing_file})" if shown else ""))
    if args.drop_missing and covers.missing:
        print(f"  --drop_missing: removed {n_read - len(table):,} interactions; users left with none: "
              f"{users_read - n_users:,}")
    elif covers.missing:
        print("  their interactions are kept: IDNet runs as is; PixelNet and ViNet need every cover, so rerun "
              "with --drop_missing (or add the images) first")

    data = f"--data_path={out} --dataset={args.name}"
    print("next:")
    print(f"  python generate_lmdb.py --data_path {out} --dataset {args.name}")
    print(f"  python main.py --device 0 --config_file IDNet/sasrec.yaml overall/ID.yaml {data} --precision=bf16")
    print(f"  python main.py --device 0 --config_file PixelNet/sasrec.yaml overall/ViT.yaml {data} --precision=bf16")
    print(f"  python -m REC features --config_file overall/ResNet50.yaml {data} --device cuda --precision bf16")
    print(f"  python main.py --device 0 --config_file ViNet/vbpr.yaml overall/ID.yaml {data} "
          f"--v_feat_path={out / 'visual_features' / 'resnet50.npy'}")
    return 1 if covers.missing and not args.drop_missing else 0


if __name__ == "__main__":
    sys.exit(main())
