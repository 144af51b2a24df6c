"""Covers database: packing (resize, encodings, resume after a kill, the report), reading, DataLoader workers."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

import generate_lmdb
from REC.data import DataError, TokenTable
from REC.data.cover_pack import find_images, pack_covers, read_item_tokens
from REC.data.covers import CoverError, CoverStore

ROOT = Path(__file__).resolve().parents[1]


def write_csv(path: Path, tokens: list[str]) -> Path:
    """Each item twice, shuffled users, so item order is 'first appearance' and not file-sorted."""
    rows = [f"{t},u{k % 7},{k}" for k, t in enumerate(tokens + tokens[::-1])]
    path.write_text("item_id,user_id,timestamp\n" + "\n".join(rows) + "\n")
    return path


def noise_image(rng, width: int, height: int) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def smooth_image(rng, width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    phase = rng.uniform(0, 6, size=3)
    channels = [127 + 100 * np.sin(3 * x + 2 * y + p) for p in phase]
    return np.clip(np.stack(channels, -1) + rng.normal(0, 2, (height, width, 3)), 0, 255).astype(np.uint8)


def make_dataset(folder: Path, n: int, width: int, height: int, seed: int = 0, maker=noise_image,
                 fmt: str = "png") -> tuple[list[str], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    covers = folder / "cover"
    covers.mkdir(parents=True, exist_ok=True)
    tokens = [f"i{k}" for k in rng.permutation(10 * n)[:n]]
    pixels = {}
    for t in tokens:
        pixels[t] = maker(rng, width, height)
        Image.fromarray(pixels[t]).save(covers / f"{t}.{fmt}")
    write_csv(folder / "Tiny.csv", tokens)
    return tokens, pixels


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "generate_lmdb.py"), *args], capture_output=True, text=True,
                          env=env, timeout=120, **kwargs)


# ----------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_lossless_round_trip(tmp_path, encoding):
    tokens, pixels = make_dataset(tmp_path, n=12, width=16, height=16)
    out = tmp_path / "covers.lmdb"
    report = pack_covers(tmp_path / "Tiny.csv", tmp_path / "cover", out, size=16, encoding=encoding, workers=2)
    assert (report.items, report.stored, report.skipped, report.ok) == (12, 12, 0, True)
    assert report.source_sizes == {"16x16": 12} and report.odd_sized == {}
    assert json.loads((out / "report.json").read_text())["stored"] == 12

    # read before any CoverStore: LMDB allows one open environment per database and process
    with lmdb.open(str(out), readonly=True, lock=False) as env, env.begin() as txn:
        meta = json.loads(txn.get(b"__meta__"))
        value = txn.get(tokens[0].encode())
    assert meta == {"format": "pixelrec-covers", "version": 1, "encoding": encoding, "height": 16, "width": 16,
                    "channels": 3}
    if encoding == "raw":  # the HWC array's bytes, nothing wrapped around them
        assert value == pixels[tokens[0]].tobytes()
    else:
        assert value[:8] == b"\x89PNG\r\n\x1a\n"

    store = CoverStore(out, TokenTable.from_strings(tokens))
    assert (store.height, store.width, store.encoding) == (16, 16, encoding)
    got = store.get(np.arange(len(tokens) + 1))
    assert got.shape == (13, 3, 16, 16) and got.dtype == np.uint8 and got.flags.c_contiguous
    assert not got[0].any()  # padding
    for k, t in enumerate(tokens, start=1):
        np.testing.assert_array_equal(got[k], pixels[t].transpose(2, 0, 1))


def test_jpeg_is_close(tmp_path):
    tokens, pixels = make_dataset(tmp_path, n=6, width=32, height=32, maker=smooth_image)
    out = tmp_path / "covers.lmdb"
    pack_covers(tmp_path / "Tiny.csv", tmp_path / "cover", out, size=32, encoding="jpeg", quality=95, workers=1)
    store = CoverStore(out, ["[PAD]", *tokens])  # a list indexed like a TokenTable works too
    got = store.get(np.arange(1, 7)).astype(np.int16)
    want = np.stack([pixels[t].transpose(2, 0, 1) for t in tokens]).astype(np.int16)
    assert np.abs(got - want).mean() < 2.0


def test_resize_is_pil_bilinear_like_torchvision(tmp_path):
    rng = np.random.default_rng(1)
    covers = tmp_path / "cover"
    covers.mkdir()
    sources = {"wide": noise_image(rng, 50, 30), "tall": noise_image(rng, 10, 17)}  # down- and up-scaling
    for t, a in sources.items():
        Image.fromarray(a).save(covers / f"{t}.png")
    Image.fromarray(noise_image(rng, 40, 40)).convert("L").save(covers / "grey.jpg")  # not RGB: converted
    write_csv(tmp_path / "Tiny.csv", ["wide", "tall", "grey"])
    out = tmp_path / "covers.lmdb"
    report = pack_covers(tmp_path / "Tiny.csv", covers, out, size=24, workers=2)
    assert report.source_sizes == {"50x30": 1, "10x17": 1, "40x40": 1}
    store = CoverStore(out, ["[PAD]", "wide", "tall", "grey"])
    got = store.get(np.array([[1, 2, 3]]))
    assert got.shape == (1, 3, 3, 24, 24)
    tv = pytest.importorskip("torchvision.transforms")
    for k, t in enumerate(["wide", "tall", "grey"]):
        src = Image.open(next(covers.glob(f"{t}.*"))).convert("RGB")
        want = np.asarray(src.resize((24, 24), Image.BILINEAR))
        np.testing.assert_array_equal(got[0, k], want.transpose(2, 0, 1))
        np.testing.assert_array_equal(want, np.asarray(tv.Resize((24, 24))(src)))  # what the original did


def test_find_images_one_listing(tmp_path):
    for name in ["a.png", "a.jpg", "b.JPEG", "c.webp", "d.gif", "e.txt"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "f.jpg").mkdir()
    found = find_images(tmp_path)
    assert {k: Path(v).name for k, v in found.items()} == {"a": "a.jpg", "b": "b.JPEG", "c": "c.webp"}


# ----------------------------------------------------------------------------------------------- report
def test_missing_unreadable_and_odd_sized_are_reported(tmp_path):
    tokens, pixels = make_dataset(tmp_path, n=8, width=20, height=16)
    covers = tmp_path / "cover"
    (covers / f"{tokens[1]}.png").unlink()                                    # missing
    (covers / f"{tokens[2]}.png").unlink()
    (covers / f"{tokens[2]}.jpg").write_bytes(b"this is not a jpeg at all")   # unreadable
    Image.fromarray(pixels[tokens[3]][:, :12]).save(covers / f"{tokens[3]}.png")  # odd-sized 12x16
    proc = run_cli(f"--data_path={tmp_path}", "--dataset=Tiny", "--size=8", "--workers=2")
    assert proc.returncode == 1, proc.stderr
    assert f"missing, no file in {covers} (1): {tokens[1]}" in proc.stdout
    assert f"unreadable (1): {tokens[2]}" in proc.stdout and f"{tokens[3]} (12x16)" in proc.stdout

    out = tmp_path / "covers.lmdb"
    report = json.loads((out / "report.json").read_text())
    assert report["missing"] == [tokens[1]]
    assert list(report["unreadable"]) == [tokens[2]] and "UnidentifiedImageError" in report["unreadable"][tokens[2]]
    assert report["odd_sized"] == {tokens[3]: "12x16"} and report["common_size"] == "20x16"
    assert report["source_sizes"] == {"20x16": 5, "12x16": 1}
    assert (report["stored"], report["skipped"], report["items"]) == (6, 0, 8)

    store = CoverStore(out, TokenTable.from_strings(tokens))
    np.testing.assert_array_equal(store.missing(), [2, 3])
    np.testing.assert_array_equal(store.missing(np.array([0, 3, 3, 1, 5])), [3])
    with pytest.raises(CoverError, match=rf"{tokens[2]} \(internal id 3\) in {out}"):
        store.get(np.array([1, 3]))
    assert store.get(np.array([0, 4])).shape == (2, 3, 8, 8)  # the odd-sized one is stored, resized

    other = tmp_path / "other.lmdb"  # an absolute --covers_dir is used as is, not joined to data_path
    assert generate_lmdb.main([f"--data_path={tmp_path}", "--dataset=Tiny", "--size=8", f"--covers_dir={covers}",
                               f"--output={other}", "--workers=1"]) == 1
    assert json.loads((other / "report.json").read_text())["stored"] == 6


def test_cli_exit_2_on_bad_input(tmp_path, capsys):
    make_dataset(tmp_path, n=3, width=8, height=8)
    (tmp_path / "NoItem.csv").write_text("item,user_id,timestamp\ni1,u1,1\n")
    assert generate_lmdb.main([f"--data_path={tmp_path}", "--dataset=NoItem"]) == 2
    err = capsys.readouterr().err
    assert "NoItem.csv: header is ['item', 'user_id', 'timestamp']; expected an item_id column" in err
    with pytest.raises(DataError, match="header is"):
        read_item_tokens(tmp_path / "NoItem.csv")

    assert generate_lmdb.main([f"--data_path={tmp_path}", "--dataset=Tiny", "--covers_dir=nowhere"]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        generate_lmdb.main(["--size=0"])
    assert exc.value.code == 2

    base = [f"--data_path={tmp_path}", "--dataset=Tiny", "--size=8", "--workers=1"]
    assert generate_lmdb.main(base) == 0
    assert generate_lmdb.main([*base, "--encoding=png"]) == 2  # resuming with other options
    assert "was made with encoding raw, size 8x8; this run asks for png, 8x8" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- resume
def test_resume_after_sigkill(tmp_path):
    n = 300
    tokens, pixels = make_dataset(tmp_path, n=n, width=8, height=8)
    out = tmp_path / "covers.lmdb"
    args = [sys.executable, str(ROOT / "generate_lmdb.py"), f"--data_path={tmp_path}", "--dataset=Tiny",
            "--size=8", "--workers=2", "--txn_megabytes=0.0001"]  # one commit per cover
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        for line in proc.stderr:
            if "committed 5 of" in line or time.monotonic() > deadline:
                break
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its pool workers, mid-run
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    store = CoverStore(out, TokenTable.from_strings(tokens))
    present = n - len(store.missing())
    assert 5 <= present < n

    done = run_cli(f"--data_path={tmp_path}", "--dataset=Tiny", "--size=8", "--workers=2")
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert (report["skipped"], report["stored"]) == (present, n - present)
    assert f"already stored (skipped): {present:,}" in done.stdout
    assert len(store.missing()) == 0
    got = store.get(np.arange(1, n + 1))
    np.testing.assert_array_equal(got, np.stack([pixels[t].transpose(2, 0, 1) for t in tokens]))


def test_map_grows_when_full(tmp_path):
    tokens, pixels = make_dataset(tmp_path, n=80, width=96, height=96, maker=smooth_image, fmt="jpg")
    out = tmp_path / "covers.lmdb"
    # the first map is 4 transactions + 1 MiB = 1.2 MiB; 80 raw 96x96 covers are 2.2 MB, so it has to grow
    report = pack_covers(tmp_path / "Tiny.csv", tmp_path / "cover", out, size=96, workers=1, txn_megabytes=0.05)
    assert report.stored == 80 and (out / "data.mdb").stat().st_size > 80 * 96 * 96 * 3
    store = CoverStore(out, TokenTable.from_strings(tokens))
    assert len(store.missing()) == 0
    assert store.get(np.arange(1, 81)).shape == (80, 3, 96, 96)


# ----------------------------------------------------------------------------------------------- reader
def test_store_errors(tmp_path):
    with pytest.raises(CoverError, match="does not exist; build it with `python generate_lmdb.py`"):
        CoverStore(tmp_path / "nothing.lmdb", ["[PAD]", "a"])
    with lmdb.open(str(tmp_path / "foreign")) as env, env.begin(write=True) as txn:
        txn.put(b"i1", b"pickled stuff")
    with pytest.raises(CoverError, match="not a covers database made by generate_lmdb.py"):
        CoverStore(tmp_path / "foreign", ["[PAD]", "i1"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CoverError, match="not a covers database"):
        CoverStore(tmp_path / "empty", ["[PAD]", "i1"])

    tokens, _ = make_dataset(tmp_path, n=2, width=8, height=8)
    pack_covers(tmp_path / "Tiny.csv", tmp_path / "cover", tmp_path / "c.lmdb", size=8, workers=1)
    store = CoverStore(tmp_path / "c.lmdb", ["[PAD]", *tokens, "i_nowhere"])
    with pytest.raises(CoverError, match=r"no cover for item i_nowhere \(internal id 3\) in .*c.lmdb"):
        store.get(np.array([1, 3]))
    with pytest.raises(CoverError, match="outside"):
        store.get(np.array([4]))
    np.testing.assert_array_equal(store.missing(), [3])
    assert not store.get(np.zeros((2, 3), dtype=np.int64)).any()


class CoverDataset(torch.utils.data.Dataset):
    def __init__(self, store, n):
        self.store, self.n = store, n

    def __len__(self):
        return self.n

    def __getitem__(self, idx):
        return torch.from_numpy(self.store.get(np.array([idx]))[0])


def test_store_pickles_and_feeds_dataloader_workers(tmp_path):
    tokens, pixels = make_dataset(tmp_path, n=10, width=8, height=8)
    pack_covers(tmp_path / "Tiny.csv", tmp_path / "cover", tmp_path / "c.lmdb", size=8, encoding="png", workers=1)
    store = CoverStore(tmp_path / "c.lmdb", TokenTable.from_strings(tokens))
    want = store.get(np.arange(11))  # the parent has the environment open before the workers fork
    clone = pickle.loads(pickle.dumps(store))
    assert clone._env is None
    np.testing.assert_array_equal(clone.get(np.arange(11)), want)

    loader = torch.utils.data.DataLoader(CoverDataset(store, 11), batch_size=3, num_workers=2)
    got = torch.cat(list(loader)).numpy()
    np.testing.assert_array_equal(got, want)
