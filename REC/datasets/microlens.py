"""MicroLens pairs file + cover folder -> PixelRec's layout:

    python -m REC.datasets.microlens --pairs MicroLens-100K_pairs.tsv --covers <folder> --out dataset/

MicroLens ships sequences, one user per line (``user<TAB>item item item ...``, items in time order), and no
timestamps; PixelRec reads ``<data_path>/<dataset>.csv`` (``item_id,user_id,timestamp``) and orders each user's
items by timestamp. Writing a user's k-th item (k from 0) with timestamp k makes that order exactly the file's.
Covers are linked (or copied) into ``<out>/cover/``, the folder ``generate_lmdb.py`` reads by default, so the
packer needs no extra option and the images are not duplicated.

Exit status: 0 every item of the CSV has a cover; 1 some items have none (listed in
``<out>/<name>_missing_covers.txt``; the CSV is written with their interactions; ``--drop_missing`` removes them);
2 bad arguments or an unreadable pairs file, covers folder or output.
"""
from __future__ import annotations

import argparse
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
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"pairs file {path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"pairs file {path} is a folder; expected the MicroLens *_pairs.tsv file") from None
    except UnicodeDecodeError as exc:
        line = text_line_of(path, exc.start)
        raise DataError(f"{path}: not UTF-8 (byte {exc.start}, line {line})") from None
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


def text_line_of(path: Path, byte: int) -> int:
    with open(path, "rb") as f:
        return f.read(byte).count(b"\n") + 1


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
    kept: int = 0                                    # already in place from an earlier run
    missing: list = field(default_factory=list)      # item ids with no image in the covers folder
    in_place: bool = False                           # --covers is <out>/cover itself: nothing to link


def place_covers(items, covers_dir, cover_out, copy: bool = False) -> CoverResult:
    """Make ``cover_out/<item>.<ext>`` for every item with an image in ``covers_dir``; the rest are ``missing``.

    A rerun keeps what is already right and replaces the rest through a temporary name, so an interrupted run
    never leaves a half-copied image under a cover's name.
    """
    images = find_images(covers_dir, EXTENSIONS)
    result = CoverResult()
    have = pd.Index(items).isin(list(images))
    result.missing = [t for t, ok in zip(items, have) if not ok]
    covers_dir, cover_out = Path(covers_dir), Path(cover_out)
    if cover_out.exists() and cover_out.resolve() == covers_dir.resolve():
        # linking a folder onto itself would replace every image with a link to itself
        result.in_place, result.kept = True, int(have.sum())
        return result
    try:
        cover_out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the cover folder {cover_out}: {exc}") from None
    for item in pd.Index(items)[have]:
        source = os.path.abspath(images[item])
        target = cover_out / os.path.basename(source)
        if _already_placed(source, target, copy):
            result.kept += 1
            continue
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            if copy:
                shutil.copyfile(source, tmp)
            else:
                os.symlink(source, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            raise DataError(f"cannot {'copy' if copy else 'link'} {source} to {target}: {exc}") from None
        result.linked += 1
    return result


def _already_placed(source: str, target: Path, copy: bool) -> bool:
    if copy:
        return (target.is_file() and not target.is_symlink()
                and target.stat().st_size == os.stat(source).st_size)
    return target.is_symlink() and os.readlink(target) == source


# ------------------------------------------------------------------------------------------------ command
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m REC.datasets.microlens", description=__doc__,
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
    try:
        frame, skipped_header = read_pairs(args.pairs, args.header)
        items = pd.unique(frame["item_id"]).tolist()
        covers = place_covers(  # creates <out>/cover, so <out>, only once the covers folder has been read
            items, args.covers, out / COVER_DIR, copy=args.copy)
        n_read, users_read = len(frame), frame["user_id"].nunique()
        if args.drop_missing and covers.missing:
            frame = frame[~frame["item_id"].isin(covers.missing)]
        table = with_timestamps(frame)
        csv_file = out / f"{args.name}.csv"
        with atomic_output(csv_file, "w", encoding="utf-8", newline="") as f:
            table.to_csv(f, index=False)
        missing_file = out / f"{args.name}_missing_covers.txt"
        write_text_atomic(missing_file, "".join(f"{t}\n" for t in covers.missing))
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
    print(f"  python -m REC.features --config_file overall/ResNet50.yaml {data} --device cuda --precision bf16")
    print(f"  python main.py --device 0 --config_file ViNet/vbpr.yaml overall/ID.yaml {data} "
          f"--v_feat_path={out / 'visual_features' / 'resnet50.npy'}")
    return 1 if covers.missing and not args.drop_missing else 0


if __name__ == "__main__":
    sys.exit(main())
