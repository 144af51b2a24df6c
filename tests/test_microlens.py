"""MicroLens importer: pairs file + covers -> CSV and linked covers that generate_lmdb.py and the loader accept."""
import os
from pathlib import Path

import lmdb
import pandas as pd
import pytest
from PIL import Image

import generate_lmdb
from REC.data import load_interactions
from REC.datasets import microlens

# user -> items in time order; item 30 has no cover; user 7 repeats item 10 (a re-watch is an interaction)
SEQUENCES = {"1": ["10", "20", "30", "40"], "2": ["20", "10"], "3": ["40", "50", "10", "60"],
             "7": ["60", "10", "50", "10"]}
COLOURS = {"10": (255, 0, 0), "20": (0, 255, 0), "40": (0, 0, 255), "50": (255, 255, 0), "60": (0, 255, 255)}


def write_inputs(folder: Path) -> tuple[Path, Path]:
    pairs = folder / "MicroLens-100K_pairs.tsv"
    rows = ["user\titem", ""] + [f"{u}\t{' '.join(items)}" for u, items in SEQUENCES.items()] + [""]
    pairs.write_text("\r\n".join(rows))  # CRLF and blank lines, as an edited file may have
    covers = folder / "covers"
    covers.mkdir()
    for item, colour in COLOURS.items():
        name = f"{item}.JPG" if item == "60" else f"{item}.jpg"  # upper-case extension, as some downloads have
        Image.new("RGB", (20, 12), colour).save(covers / name, format="JPEG")
    (covers / "notes.txt").write_text("not a cover")
    return pairs, covers


def test_import_then_pack_and_load(tmp_path, capsys):
    pairs, covers = write_inputs(tmp_path)
    out = tmp_path / "dataset"
    assert microlens.main([f"--pairs={pairs}", f"--covers={covers}", f"--out={out}", "--name=ML"]) == 1
    printed = capsys.readouterr().out
    assert "header line skipped" in printed and "missing covers: 1 (30;" in printed
    assert f"python generate_lmdb.py --data_path {out} --dataset ML" in printed
    assert (out / "ML_missing_covers.txt").read_text() == "30\n"

    table = pd.read_csv(out / "ML.csv", dtype={"item_id": str, "user_id": str})
    assert list(table.columns) == ["item_id", "user_id", "timestamp"]
    assert len(table) == sum(map(len, SEQUENCES.values()))
    for user, items in SEQUENCES.items():
        rows = table[table.user_id == user]
        assert rows.item_id.tolist() == items and rows.timestamp.tolist() == list(range(len(items)))

    links = sorted(p.name for p in (out / "cover").iterdir())
    assert links == ["10.jpg", "20.jpg", "40.jpg", "50.jpg", "60.JPG"]
    assert all(os.path.islink(out / "cover" / n) for n in links)

    # a rerun keeps the links; --copy would replace them with files
    assert microlens.main([f"--pairs={pairs}", f"--covers={covers}", f"--out={out}", "--name=ML"]) == 1
    assert "linked now 0, already there 5" in capsys.readouterr().out

    # the real packer, default covers folder: every covered item stored, 30 reported missing (exit 1)
    assert generate_lmdb.main([f"--data_path={out}", "--dataset=ML", "--size=8", "--workers=1"]) == 1
    with lmdb.open(str(out / "covers.lmdb"), readonly=True, lock=False) as env, env.begin() as txn:
        keys = {k.decode() for k in txn.cursor().iternext(values=False)} - {"__meta__"}
        red = txn.get(b"10")
    assert keys == set(COLOURS)
    assert len(red) == 8 * 8 * 3 and red[0] > 230 and red[1] < 25 and red[2] < 25  # raw HWC: the red cover

    inter = load_interactions(str(out), "ML", str(tmp_path / "cache"))
    assert (inter.user_num - 1, inter.item_num - 1, len(inter.items)) == (4, 6, 14)
    first = inter.item_tokens.to_list()
    seq = [first[i] for i in inter.items[inter.indptr[0]:inter.indptr[1]]]
    assert inter.user_tokens[int(inter.users[0])] == "1" and seq == SEQUENCES["1"]


def test_drop_missing_and_copy(tmp_path, capsys):
    pairs, covers = write_inputs(tmp_path)
    out = tmp_path / "dataset"
    assert microlens.main([f"--pairs={pairs}", f"--covers={covers}", f"--out={out}", "--name=ML",
                           "--drop_missing", "--copy"]) == 0
    assert "removed 1 interactions" in capsys.readouterr().out
    table = pd.read_csv(out / "ML.csv", dtype={"item_id": str, "user_id": str})
    rows = table[table.user_id == "1"]
    assert rows.item_id.tolist() == ["10", "20", "40"] and rows.timestamp.tolist() == [0, 1, 2]
    assert "30" not in set(table.item_id)
    assert not any(os.path.islink(p) for p in (out / "cover").iterdir())
    assert generate_lmdb.main([f"--data_path={out}", "--dataset=ML", "--size=8", "--workers=1"]) == 0


@pytest.mark.parametrize("row, why", [("5 10 20", "exactly one tab"), ("5\t", "no items"),
                                      ("\t10 20", "empty user id"), ("5\t10\t20", "exactly one tab")])
def test_malformed_row(tmp_path, capsys, row, why):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(f"user_id\titem_sequence\n1\t10 20\n\n{row}\n2\t20\n")
    covers = tmp_path / "covers"
    covers.mkdir()
    assert microlens.main([f"--pairs={pairs}", f"--covers={covers}", f"--out={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert f"{pairs}, line 4: " in err and why in err and "user<TAB>item" in err
    assert not (tmp_path / "out" / "MicroLens100K.csv").exists()


def test_header_detection(tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("1\t10 20\n2\t20\n")
    frame, skipped = microlens.read_pairs(pairs)
    assert not skipped and frame.values.tolist() == [["1", "10"], ["1", "20"], ["2", "20"]]
    pairs.write_text("alice\tbook pen\n")  # no digit: auto takes it for a header; --header no says otherwise
    frame, skipped = microlens.read_pairs(pairs, header="no")
    assert not skipped and len(frame) == 2
    with pytest.raises(microlens.DataError, match="no data rows after the header"):
        microlens.read_pairs(pairs)
