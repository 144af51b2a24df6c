"""The CSV read in bounded chunks (REC/data/streaming.py) gives exactly the arrays of reading it whole, whatever the
chunk size, and keeps every bad-input error with the right line number."""
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from REC.data import DataError, load_interactions
from REC.data.interactions import read_interactions
from REC.data.streaming import HASH_KEYS, HashCollision, IdMap
from REC.data.synthetic import write_pixel_shaped_csv

from .conftest import ROOT


def whole_file_reference(path):
    """The plain whole-file algorithm the streamed reading must reproduce: ids numbered by first appearance in the
    file, users ordered by their first event in time, each user's events by time, equal times in file order."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame["timestamp"] = frame["timestamp"].astype(np.int64)
    user_codes, user_names = pd.factorize(frame["user_id"])
    item_codes, item_names = pd.factorize(frame["item_id"])
    frame = frame.assign(user=user_codes + 1, item=item_codes + 1, row=np.arange(len(frame)))
    frame = frame.sort_values(["timestamp", "row"], kind="stable").reset_index(drop=True)
    first = frame.groupby("user").apply(lambda g: g.index.min(), include_groups=False)
    frame["first"] = frame["user"].map(first)
    frame = frame.sort_values(["first"], kind="stable")
    users = frame["user"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    return (users[starts], np.append(starts, len(users)), frame["item"].to_numpy(),
            ["[PAD]", *user_names], ["[PAD]", *item_names])


def assert_same(inter, reference):
    users, indptr, items, user_names, item_names = reference
    assert inter.users.dtype == inter.indptr.dtype == inter.items.dtype == np.int64
    assert np.array_equal(inter.users, users) and np.array_equal(inter.indptr, indptr)
    assert np.array_equal(inter.items, items)
    assert inter.user_tokens.to_list() == user_names and inter.item_tokens.to_list() == item_names


@pytest.fixture(scope="module")
def tie_log(tmp_path_factory):
    """300 rows: 40 users, ids that pandas would read as missing (NA, null, nan, None), non-ASCII ids, many events
    of a user at one timestamp, and users whose events lie far apart in the file (so every small chunk size cuts
    users in the middle)."""
    rng = np.random.default_rng(3)
    names = ["NA", "null", "nan", "None", "é-ü", "東京", *(f"u{k}" for k in range(34))]
    items = ["N/A", "0", "00", "ß", *(f"i{k}" for k in range(60))]
    frame = pd.DataFrame({"item_id": rng.choice(items, 300), "user_id": rng.choice(names, 300),
                          "timestamp": rng.integers(0, 12, 300)})  # 12 distinct times: ties everywhere
    path = tmp_path_factory.mktemp("ties") / "Ties.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 299, 300, 10_000])
def test_streamed_reading_equals_the_whole_file_algorithm(tie_log, chunk_rows):
    assert_same(read_interactions(tie_log, chunk_rows, show_progress=False), whole_file_reference(tie_log))


def test_a_pixel_shaped_log_is_read_identically_in_chunks_that_cut_users(tmp_path):
    path = write_pixel_shaped_csv(tmp_path / "P.csv", 60_000, 5_000, seed=1)
    frame = pd.read_csv(path, dtype=str)
    first_chunk_users = set(frame["user_id"][:7_000])
    assert first_chunk_users & set(frame["user_id"][7_000:14_000])  # users span chunk boundaries
    streamed = read_interactions(path, 7_000, show_progress=False)
    assert_same(streamed, whole_file_reference(path))
    assert_same(read_interactions(path, 60_000, show_progress=False), whole_file_reference(path))


def test_errors_in_a_later_chunk_name_the_line_of_the_file(tmp_path):
    rows = [f"i{k},u{k % 5},{k}" for k in range(40)]
    cases = {
        "Empty": (rows[:25] + [",u1,3"] + rows[25:], r"Empty.csv: empty item_id or user_id on lines \[27\]"),
        "Stamp": (rows[:30] + ["i1,u1,soon"] + rows[30:35] + ["i2,u2,99999999999999999999"] + rows[35:],
                  r"Stamp.csv: timestamp 'soon' on line 32 \(2 such lines\)"),
    }
    for name, (lines, message) in cases.items():
        (tmp_path / f"{name}.csv").write_text("item_id,user_id,timestamp\n" + "\n".join(lines) + "\n")
        with pytest.raises(DataError, match=message):
            read_interactions(tmp_path / f"{name}.csv", 4, show_progress=False)
    raw = ("item_id,user_id,timestamp\n" + "\n".join(rows[:33]) + "\n").encode() + b"i\xe9,u1,5\n"
    (tmp_path / "Latin.csv").write_bytes(raw)
    with pytest.raises(DataError, match=r"Latin.csv: not UTF-8 text \(byte 0xe9 .* line 35\)"):
        read_interactions(tmp_path / "Latin.csv", 4, show_progress=False)
    (tmp_path / "Header.csv").write_text("item_id,user_id,timestamp\n")
    with pytest.raises(DataError, match="no interactions"):
        read_interactions(tmp_path / "Header.csv", 4, show_progress=False)


def test_a_hash_shared_by_two_ids_is_caught_not_merged():
    """Two distinct ids with one lookup hash must never become one id: the id map refuses (and the file is then
    read again under other keys). A real 64-bit collision cannot be found for a test, so the map is given an
    entry whose check hash disagrees, as a colliding id's would."""
    ids = IdMap(HASH_KEYS[0])
    assert ids.codes(np.array(["a", "b", "a"], dtype=object)).tolist() == [1, 2, 1]
    hashes = pd.util.hash_array(np.array(["c"], dtype=object), hash_key=HASH_KEYS[0][0], categorize=False)
    ids.table.add(hashes, np.array([3]), np.array([12345], dtype=np.uint64))  # "c"'s hash, another id's check
    with pytest.raises(HashCollision):
        ids.codes(np.array(["c"], dtype=object))
    fresh = IdMap(HASH_KEYS[0])
    for chunk in (["x", "y"], ["y", "z", "x"], ["w"]):  # the levels merge as they grow; ids stay put
        fresh.codes(np.array(chunk, dtype=object))
    assert fresh.codes(np.array(["w", "z", "y", "x"], dtype=object)).tolist() == [4, 3, 2, 1]
    assert fresh.token_table().to_list() == ["[PAD]", "x", "y", "z", "w"]


KILLED_PREPARATION = """
import sys
from REC.data import load_interactions
load_interactions(sys.argv[1], "Big")
"""


def test_a_preparation_killed_midway_is_followed_by_a_clean_rerun(tmp_path):
    """SIGKILL while the cache is being written (or before): nothing half-written is ever read, the rerun gives
    the arrays of a fresh preparation, and the temporary files killed processes left are removed."""
    from REC.data.interactions import PREP_VERSION, file_digest
    write_pixel_shaped_csv(tmp_path / "Big.csv", 400_000, 20_000, seed=2)
    cache_dir = tmp_path / ".pixelrec_cache"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PREPARATION, str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and not list(cache_dir.glob(".*.tmp")):
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(cache_dir.glob("*.npz"))  # killed before its rename: no cache that could be read
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process id that no longer runs, as a killed preparation's
    cache_name = f"Big-{file_digest(tmp_path / 'Big.csv')}-v{PREP_VERSION}.npz"
    cache_dir.mkdir(exist_ok=True)
    from REC.utils.files import _HOST
    (cache_dir / f".{cache_name}.{_HOST}.{dead.pid}.tmp").write_bytes(b"half a cache")
    other_node = cache_dir / f".{cache_name}.another-node.{dead.pid}.tmp"  # may be writing right now: kept
    other_node.write_bytes(b"another machine's half cache")
    inter = load_interactions(str(tmp_path), "Big")
    assert_same(inter, whole_file_reference(tmp_path / "Big.csv"))
    assert list(cache_dir.glob(".*.tmp")) == [other_node], list(cache_dir.iterdir())
    assert [p.name for p in cache_dir.glob("*.npz")] == [cache_name]
