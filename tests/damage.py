"""The damage a stored ``.npy`` can take after it was written (a disk error, a bad copy, a tool that rewrote part
of it), made on purpose: each readers' test checks it ends in a rebuild with a warning, or one error line."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _layout(path: Path) -> tuple[int, int]:
    """(data offset, bytes per row) of the .npy ``path``."""
    array = np.load(path, mmap_mode="r")
    return array.offset, array[0].nbytes


def swap_rows(path: Path, a: int, b: int) -> None:
    offset, row = _layout(path)
    with open(path, "r+b") as f:
        f.seek(offset + a * row)
        row_a = f.read(row)
        f.seek(offset + b * row)
        row_b = f.read(row)
        assert row_a != row_b, "swapping equal rows changes nothing"
        f.seek(offset + a * row)
        f.write(row_b)
        f.seek(offset + b * row)
        f.write(row_a)


def flip_bytes(path: Path, row: int) -> None:
    """Four bytes of ``row`` inverted."""
    offset, size = _layout(path)
    at = offset + row * size + min(8, size - 4)
    with open(path, "r+b") as f:
        f.seek(at)
        data = f.read(4)
        f.seek(at)
        f.write(bytes(x ^ 0xFF for x in data))


def damage_header(path: Path) -> None:
    """The header's dict opens with 'descr'; two bytes there make it unparseable."""
    with open(path, "r+b") as f:
        f.seek(11)
        f.write(b"\x00\x07")


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 64)


DAMAGE = {"two rows swapped": lambda p: swap_rows(p, 1, 2), "bytes flipped": lambda p: flip_bytes(p, 3),
          "header damaged": damage_header, "cut by 64 bytes": truncate}
