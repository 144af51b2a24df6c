"""Importers and the cover packer do not lose or silently misread data (issue 25): the MicroLens importer never
replaces a file it did not make and drops a byte-order mark; generate_lmdb.py repacks covers whose file changed
and says so; 16-bit greyscale covers keep their range."""
import json
import os
from pathlib import Path

import lmdb
import numpy as np
import pandas as pd
from PIL import Image

import generate_lmdb
from REC.data.cover_pack import SOURCES_NAME, pack_covers
from REC.datasets import microlens


# ----------------------------------------------------------------------------------------------- helpers
def write_microlens(folder: Path) -> tuple[Path, Path]:
    """A pairs file (users 1 and 2; item 30 has no cover) and a covers folder of 10, 20, 40."""
    pairs = folder / "pairs.tsv"
    pairs.write_text("1\t10 20 30\n2\t20 40\n")
    covers = folder / "ml_covers"
    covers.mkdir()
    for item, colour in {"10": (255, 0, 0), "20": (0, 255, 0), "40": (0, 0, 255)}.items():
        Image.new("RGB", (8, 8), colour).save(covers / f"{item}.jpg", format="JPEG")
    return pairs, covers


def import_args(pairs, covers, out, *extra):
    return [f"--pairs={pairs}", f"--covers={covers}", f"--out={out}", "--name=ML", *extra]


def write_csv(path: Path, tokens) -> None:
    path.write_text("item_id,user_id,timestamp\n" + "".join(f"{t},u{k % 3},{k}\n" for k, t in enumerate(tokens)))


def stored(db: Path, token: str) -> np.ndarray:
    """The raw HWC pixels stored for ``token`` (8x8 covers), read straight from the LMDB."""
    with lmdb.open(str(db), readonly=True, lock=False) as env, env.begin() as txn:
        value = txn.get(token.encode())
    return None if value is None else np.frombuffer(value, dtype=np.uint8).reshape(8, 8, 3)


def summary_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("  stored now:"))


# ----------------------------------------------------------------------------------------------- 1: collisions
def test_microlens_refuses_to_replace_another_datasets_cover(tmp_path, capsys):
    pairs, covers = write_microlens(tmp_path)
    out = tmp_path / "dataset"
    (out / "cover").mkdir(parents=True)
    theirs = out / "cover" / "10.jpg"  # another dataset's item 10, a different picture
    Image.new("RGB", (8, 8), (9, 9, 9)).save(theirs, format="JPEG")
    before = theirs.read_bytes()

    assert microlens.main(import_args(pairs, covers, out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"microlens: error: {out / 'cover'} already holds 1 file that ")
    assert f"{theirs} is not {covers.resolve() / '10.jpg'}" in err and "Nothing was written" in err
    assert not theirs.is_symlink() and theirs.read_bytes() == before
    assert sorted(os.listdir(out / "cover")) == ["10.jpg"]  # no link made for 20 or 40 either
    assert sorted(os.listdir(out)) == ["cover"]              # no CSV, no missing list


def test_microlens_refuses_a_second_cover_of_the_same_item(tmp_path, capsys):
    pairs, covers = write_microlens(tmp_path)
    out = tmp_path / "dataset"
    (out / "cover").mkdir(parents=True)
    Image.new("RGB", (8, 8), (9, 9, 9)).save(out / "cover" / "20.PNG")  # generate_lmdb.py would pick one of two
    assert microlens.main(import_args(pairs, covers, out)) == 2
    assert f"{out / 'cover' / '20.PNG'} is another cover of item 20" in capsys.readouterr().err
    assert sorted(os.listdir(out / "cover")) == ["20.PNG"]


def test_microlens_leaves_an_identical_file_alone(tmp_path, capsys):
    pairs, covers = write_microlens(tmp_path)
    out = tmp_path / "dataset"
    (out / "cover").mkdir(parents=True)
    same = out / "cover" / "10.jpg"
    same.write_bytes((covers / "10.jpg").read_bytes())
    inode = same.stat().st_ino

    assert microlens.main(import_args(pairs, covers, out)) == 1  # 30 has no cover
    assert not same.is_symlink() and same.stat().st_ino == inode
    printed = capsys.readouterr().out
    assert "linked now 2, already there 1; 1 of these are files this importer did not make" in printed
    assert (out / "cover" / "20.jpg").is_symlink()

    # a rerun keeps its own links and the foreign file; --copy replaces only its own links
    assert microlens.main(import_args(pairs, covers, out)) == 1
    assert "linked now 0, already there 3" in capsys.readouterr().out
    assert microlens.main(import_args(pairs, covers, out, "--copy")) == 1
    assert "copied now 2, already there 1" in capsys.readouterr().out
    assert not (out / "cover" / "20.jpg").is_symlink() and same.stat().st_ino == inode


def test_microlens_refuses_to_replace_a_csv_it_did_not_write(tmp_path, capsys):
    pairs, covers = write_microlens(tmp_path)
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "ML.csv").write_text("item_id,user_id,timestamp\nx,y,1\n")
    assert microlens.main(import_args(pairs, covers, out)) == 2
    err = capsys.readouterr().err
    assert f"{out / 'ML.csv'} already exists and was not written by this importer (no ML_missing_covers.txt" in err
    assert (out / "ML.csv").read_text() == "item_id,user_id,timestamp\nx,y,1\n"
    assert not (out / "cover").exists()

    (out / "ML.csv").unlink()  # an import of its own is replaced by a rerun
    assert microlens.main(import_args(pairs, covers, out)) == 1
    assert microlens.main(import_args(pairs, covers, out, "--drop_missing")) == 0
    assert "30" not in set(pd.read_csv(out / "ML.csv", dtype=str).item_id)


# ----------------------------------------------------------------------------------------------- 2: BOM
def test_microlens_drops_a_byte_order_mark(tmp_path):
    pairs, covers = write_microlens(tmp_path)
    pairs.write_bytes(b"\xef\xbb\xbf" + b"1\t10 20\n2\t20\n1\t40\n")  # no header: the BOM sits before user 1
    out = tmp_path / "dataset"
    assert microlens.main(import_args(pairs, covers, out)) == 0
    table = pd.read_csv(out / "ML.csv", dtype={"item_id": str, "user_id": str}, encoding="utf-8")
    assert sorted(set(table.user_id)) == ["1", "2"]
    rows = table[table.user_id == "1"]
    assert rows.item_id.tolist() == ["10", "20", "40"] and rows.timestamp.tolist() == [0, 1, 2]

    pairs.write_bytes(b"\xef\xbb\xbf" + b"1\t10\n2\t\xff\n")  # offsets still count the mark's 3 bytes
    try:
        microlens.read_pairs(pairs)
    except microlens.DataError as exc:
        assert str(exc) == f"{pairs}: not UTF-8 (byte 10, line 2)"
    else:
        raise AssertionError("a non-UTF-8 byte was accepted")


# ----------------------------------------------------------------------------------------------- 3: changed covers
def make_covers(folder: Path, colours: dict) -> Path:
    covers = folder / "cover"
    covers.mkdir(exist_ok=True)
    for token, colour in colours.items():
        Image.new("RGB", (8, 8), colour).save(covers / f"{token}.png")
    return covers


def test_rerun_repacks_a_changed_cover_and_says_so(tmp_path, capsys):
    make_covers(tmp_path, {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255)})
    write_csv(tmp_path / "T.csv", ["a", "b", "c"])
    args = [f"--data_path={tmp_path}", "--dataset=T", "--size=8", "--workers=1"]
    assert generate_lmdb.main(args) == 0
    first = capsys.readouterr().out
    db = tmp_path / "covers.lmdb"

    changed = tmp_path / "cover" / "b.png"
    mtime = changed.stat().st_mtime_ns
    Image.new("RGB", (8, 8), (10, 20, 30)).save(changed)
    os.utime(changed, ns=(mtime + 10**9, mtime + 10**9))  # a later edit, even on a coarse-clock filesystem
    make_covers(tmp_path, {"d": (200, 200, 0)})
    write_csv(tmp_path / "T.csv", ["a", "b", "c", "d"])
    assert generate_lmdb.main(args) == 0
    assert (stored(db, "b") == (10, 20, 30)).all() and (stored(db, "d") == (200, 200, 0)).all()
    assert summary_line(first).startswith("  stored now: 3 (new: 3; repacked, file changed since packed: 0)")
    assert summary_line(capsys.readouterr().out) == (
        "  stored now: 2 (new: 1; repacked, file changed since packed: 1); already stored (skipped): 2, file "
        "unchanged; stale covers removed: 0; without a usable image: 0")
    report = json.loads((db / "report.json").read_text())
    assert (report["stored"], report["new"], report["changed"], report["skipped"]) == (2, 1, 1, 2)

    assert generate_lmdb.main(args) == 0  # nothing changed: nothing packed
    assert summary_line(capsys.readouterr().out).startswith(
        "  stored now: 0 (new: 0; repacked, file changed since packed: 0); already stored (skipped): 4, file "
        "unchanged;")


def test_rerun_removes_a_stale_cover_and_keeps_one_whose_file_is_gone(tmp_path, capsys):
    covers = make_covers(tmp_path, {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255)})
    write_csv(tmp_path / "T.csv", ["a", "b", "c"])
    db = tmp_path / "covers.lmdb"
    pack_covers(tmp_path / "T.csv", covers, db, size=8, workers=1)

    (covers / "a.png").write_bytes(b"half a download")  # changed into something unreadable
    (covers / "c.png").unlink()                         # deleted once packed: the stored cover is all there is
    assert generate_lmdb.main([f"--data_path={tmp_path}", "--dataset=T", "--size=8", "--workers=1"]) == 1
    printed = capsys.readouterr().out
    assert summary_line(printed) == (
        "  stored now: 0 (new: 0; repacked, file changed since packed: 0); already stored (skipped): 2, file "
        "unchanged (1 of them have no file now; their covers are kept); stale covers removed: 1; without a usable "
        "image: 1")
    assert "  removed, file changed and now unreadable (1): a" in printed
    assert stored(db, "a") is None and (stored(db, "c") == (0, 0, 255)).all()


def test_database_without_file_records_is_repacked(tmp_path):
    covers = make_covers(tmp_path, {"a": (255, 0, 0), "b": (0, 255, 0)})
    write_csv(tmp_path / "T.csv", ["a", "b"])
    db = tmp_path / "covers.lmdb"
    pack_covers(tmp_path / "T.csv", covers, db, size=8, workers=1)
    for name in (SOURCES_NAME, f"{SOURCES_NAME}-lock"):  # as a database packed before the records existed
        (db / name).unlink(missing_ok=True)
    report = pack_covers(tmp_path / "T.csv", covers, db, size=8, workers=1)
    assert (report.stored, report.unrecorded, report.skipped) == (2, 2, 0)
    assert "repacked, no record of the file it came from (an older database): 2" in report.summary()
    assert pack_covers(tmp_path / "T.csv", covers, db, size=8, workers=1).skipped == 2


# ----------------------------------------------------------------------------------------------- 4: 16-bit covers
def test_sixteen_bit_grey_png_is_scaled_not_clipped(tmp_path):
    grey = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1040).astype(np.uint16)  # 0 .. 65520
    covers = tmp_path / "cover"
    covers.mkdir()
    Image.fromarray(grey).save(covers / "g.png")
    with Image.open(covers / "g.png") as img:
        assert img.mode == "I;16"  # a real 16-bit PNG, as PIL reads it back
    write_csv(tmp_path / "T.csv", ["g"])
    db = tmp_path / "covers.lmdb"
    assert pack_covers(tmp_path / "T.csv", covers, db, size=8, workers=1).ok
    want = np.repeat((grey >> 8).astype(np.uint8)[..., None], 3, axis=2)
    np.testing.assert_array_equal(stored(db, "g"), want)
    assert 120 < stored(db, "g").mean() < 135  # not the almost-white 254.6 of convert("RGB")


def test_integer_and_float_modes(tmp_path):
    """TIFF holds the other modes a cover file could have (``I`` from older Pillow's 16-bit PNGs, big-endian
    16-bit, ``F``); values that are not 16-bit samples are reported, not guessed at."""
    covers = tmp_path / "cover"
    covers.mkdir()
    ramp = np.arange(64, dtype=np.int32).reshape(8, 8) * 1000  # 0 .. 63000
    Image.fromarray(ramp).save(covers / "i.tif")
    Image.frombytes("I;16B", (8, 8), ramp.astype(">u2").tobytes()).save(covers / "b.tif")
    Image.fromarray(ramp * 2).save(covers / "wide.tif")  # up to 126000: not 16-bit samples
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(covers / "f.tif")
    write_csv(tmp_path / "T.csv", ["i", "b", "wide", "f"])
    db = tmp_path / "covers.lmdb"
    report = pack_covers(tmp_path / "T.csv", covers, db, size=8, workers=1, extensions=("tif",))
    want = np.repeat((ramp >> 8).astype(np.uint8)[..., None], 3, axis=2)
    np.testing.assert_array_equal(stored(db, "i"), want)
    np.testing.assert_array_equal(stored(db, "b"), want)
    assert sorted(report.unreadable) == ["f", "wide"]
    assert "outside the 16-bit range 0..65535" in report.unreadable["wide"]
    assert "mode F: floating-point pixels have no agreed range" in report.unreadable["f"]
    assert stored(db, "f") is None and stored(db, "wide") is None
