"""Pack item covers into the LMDB that PixelNet and ViNet read: python generate_lmdb.py --data_path dataset/
(or python -m REC pack --data_path dataset/)

Reads the distinct item_id values of <data_path>/<dataset>.csv, finds <covers_dir>/<item_id>.jpg (or .jpeg,
.png, .webp), resizes each to size x size and stores it under its item_id. A rerun skips what is stored while
its file is unchanged (same name, size and modification time), repacks covers whose file changed, and says how
many of each in its summary.
Exit status: 0 every item has a cover; 1 some items have no usable image (listed in <output>/report.json);
2 bad arguments, CSV, folder or output.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ..data.cover_pack import pack_covers
from ..data.covers import DEFAULT_NAME, ENCODINGS
from ..data.interactions import csv_path
from ..utils.errors import UserError


def percent(text):
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be in 1..100, got {text}")
    return value


def positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="generate_lmdb.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_path", default="dataset/", help="folder holding the interactions CSV (default: dataset/)")
    p.add_argument("--dataset", default="Pixel200K", help="CSV name without .csv: <data_path>/<dataset>.csv "
                   "(default: Pixel200K)")
    p.add_argument("--covers_dir", default="cover", help="folder of <item_id>.jpg covers, relative to data_path "
                   "unless absolute (default: cover)")
    p.add_argument("--output", default=None, help="database folder to create or resume (default: "
                   "<data_path>/covers.lmdb, where training looks when cover_lmdb is null)")
    p.add_argument("--size", type=positive(int), default=224, help="covers are resized to size x size, PIL bilinear "
                   "(default: 224, as the original)")
    p.add_argument("--encoding", choices=ENCODINGS, default="raw", help="raw: exact pixels, as the original "
                   "(~150 KB per 224 cover); png: exact, smaller, slower to read; jpeg: smallest, lossy (default: raw)")
    p.add_argument("--quality", type=percent, default=95,
                   help="JPEG quality, used with --encoding jpeg only (default: 95)")
    p.add_argument("--workers", type=positive(int), default=None, help="processes decoding and resizing "
                   f"(default: all cores, {os.cpu_count()} here)")
    p.add_argument("--txn_megabytes", type=positive(float), default=256, help="commit after this many megabytes "
                   "of covers; a killed run loses at most one transaction and a rerun completes it (default: 256)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    covers_dir = os.path.join(args.data_path, args.covers_dir)  # join keeps an absolute covers_dir as is
    output = args.output or os.path.join(args.data_path, DEFAULT_NAME)
    try:
        report = pack_covers(csv_path(args.data_path, args.dataset), covers_dir, output, size=args.size,
                             encoding=args.encoding, quality=args.quality, workers=args.workers,
                             txn_megabytes=args.txn_megabytes)
    except UserError as exc:
        print(f"generate_lmdb.py: error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.ok else 1

