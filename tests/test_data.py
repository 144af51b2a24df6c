"""Remapping, chronological order, leave-one-out split, chunking, negative sampling and the cache."""
import numpy as np
import pandas as pd
import pytest

from REC.data import (DataError, EvalBatches, build_train_batches, leave_one_out, load_interactions,
                      sample_negatives, sequence_chunks, shard_bounds)
from REC.app.configure import build_config

CSV = """item_id,user_id,timestamp
a,u1,5
b,u1,1
c,u2,0
d,u1,3
a,u2,2
e,u2,2
b,u2,9
f,u3,1
"""


@pytest.fixture()
def hand_log(tmp_path):
    (tmp_path / "Hand.csv").write_text(CSV)
    return load_interactions(str(tmp_path), "Hand")


def test_ids_follow_file_order_and_sequences_are_chronological(hand_log):
    assert hand_log.user_tokens.to_list() == ["[PAD]", "u1", "u2", "u3"]
    assert hand_log.item_tokens.to_list() == ["[PAD]", "a", "b", "c", "d", "e", "f"]
    # u2 starts earliest (t=0); u1 and u3 both start at t=1 and keep file order; equal timestamps (a, e at t=2)
    # keep file order because the sort is stable
    assert hand_log.users.tolist() == [2, 1, 3]
    seqs = [hand_log.items[a:b].tolist() for a, b in zip(hand_log.indptr[:-1], hand_log.indptr[1:])]
    assert seqs == [[3, 1, 5, 2], [2, 4, 1], [6]]


def test_leave_one_out_split(hand_log):
    split = leave_one_out(hand_log)
    assert split.train_indptr.tolist() == [0, 2, 3, 3]        # u2 trains on c,a; u1 on b; u3 (1 event) on nothing
    assert split.train_items.tolist() == [3, 1, 2]
    assert split.valid.users.tolist() == [2, 1] and split.valid.targets.tolist() == [5, 4]
    assert split.test.targets.tolist() == [2, 1]
    # test history includes the validation item
    assert split.test.history(0).tolist() == [3, 1, 5]
    assert split.valid.hist_items is split.test.hist_items  # slices of one array: no copy per split
    assert split.valid.last_items(3).tolist() == [[0, 3, 1], [0, 0, 2]]


def _split_of_lengths(tmp_path, lengths):
    rows = [(f"i{u}_{t}", f"u{u}", t) for u, n in enumerate(lengths) for t in range(n + 2)]
    pd.DataFrame(rows, columns=["item_id", "user_id", "timestamp"]).to_csv(tmp_path / "L.csv", index=False)
    return leave_one_out(load_interactions(str(tmp_path), "L"))


def test_chunking_drops_the_oldest_remainder(tmp_path):
    # training lengths 25, 12, 11, 1 with M = 10 (chunks of 11), the original's own examples
    split = _split_of_lengths(tmp_path, [25, 12, 11, 1])
    chunks = sequence_chunks(split, 10)
    first = split.train_items[split.train_indptr[:-1]]  # internal id of each user's oldest training item
    def ids(user, positions):
        return [first[user] + p for p in positions]
    assert chunks.shape == (5, 11)
    assert chunks[0].tolist() == ids(0, range(3, 14))     # items 0..2 dropped
    assert chunks[1].tolist() == ids(0, range(14, 25))
    assert chunks[2].tolist() == ids(1, range(1, 12))     # L=12: item 0 dropped
    assert chunks[3].tolist() == ids(2, range(0, 11))
    assert chunks[4].tolist() == [0] * 10 + ids(3, [0])   # L=1: one left-padded chunk


def test_negatives_avoid_their_row_and_align_with_targets(seq_data):
    cfg = build_config(["IDNet/sasrec.yaml", "overall/ID.yaml"], [f"--data_path={seq_data}", "--dataset=Seq",
                                                                   "--train_batch_size=50"])
    split = leave_one_out(load_interactions(str(seq_data), "Seq"))
    batches = build_train_batches("NEXT_ITEM", split, cfg)
    batch = batches[0]
    items, neg = batch["items"].numpy(), batch["negatives"].numpy()
    assert items.shape == neg.shape == (50, 11)
    has_target = np.zeros_like(items, dtype=bool)
    has_target[:, 1:] = (items[:, 1:] > 0) & (items[:, :-1] > 0)
    assert ((neg > 0) == has_target).all()
    for row_items, row_neg in zip(items, neg):
        assert not set(row_neg[row_neg > 0]) & set(row_items)
    # same (seed, epoch, rank, batch) -> same batch; a new epoch reshuffles
    assert np.array_equal(batches[0]["negatives"].numpy(), neg)
    batches.set_epoch(1)
    assert not np.array_equal(batches[0]["items"].numpy(), items)


def test_sample_negatives_terminates_on_a_crowded_row():
    rng = np.random.default_rng(0)
    avoid = np.array([[1, 2, 3, 4, 5, 6, 7, 8]])  # items 1..9 exist; only 9 is allowed
    assert (sample_negatives(rng, avoid, item_num=10) == 9).all()


def test_ranks_share_the_training_examples_evenly(seq_data):
    cfg = build_config(["IDNet/sasrec.yaml", "overall/ID.yaml"], [f"--data_path={seq_data}", "--dataset=Seq",
                                                                   "--train_batch_size=16"])
    split = leave_one_out(load_interactions(str(seq_data), "Seq"))
    parts = [build_train_batches("NEXT_ITEM", split, cfg, rank=r, world_size=2) for r in range(2)]
    assert len(parts[0]) == len(parts[1])
    seen = [np.concatenate(p._batches) for p in parts]
    n = len(parts[0].chunks)
    assert set(np.concatenate(seen)) == set(range(n))


def test_eval_shards_cover_all_users_once():
    for n, world in [(7, 2), (1, 2), (10, 3)]:
        bounds = [shard_bounds(n, r, world) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))


def test_eval_batches_list_the_full_history(hand_log):
    split = leave_one_out(hand_log)
    batch = next(iter(EvalBatches(split.test, max_len=2, batch_size=8)))
    assert batch["item_seq"].tolist() == [[1, 5], [2, 4]]
    pairs = sorted(zip(batch["hist_row"].tolist(), batch["hist_item"].tolist()))
    assert pairs == [(0, 1), (0, 3), (0, 5), (1, 2), (1, 4)]


def test_cache_is_reused_and_keyed_by_content(tmp_path):
    (tmp_path / "C.csv").write_text(CSV)
    first = load_interactions(str(tmp_path), "C")
    cached = list((tmp_path / ".pixelrec_cache").glob("C-*.npz"))
    assert len(cached) == 1
    again = load_interactions(str(tmp_path), "C")
    assert np.array_equal(first.items, again.items) and again.item_tokens.to_list() == first.item_tokens.to_list()
    (tmp_path / "C.csv").write_text(CSV + "g,u3,4\n")
    changed = load_interactions(str(tmp_path), "C")
    assert len(list((tmp_path / ".pixelrec_cache").glob("C-*.npz"))) == 2 and len(changed.items) == 9


def test_bad_data_files_name_the_problem(tmp_path):
    with pytest.raises(DataError, match=r"Nope.csv.*does not exist.*item_id,user_id,timestamp"):
        load_interactions(str(tmp_path), "Nope")
    (tmp_path / "H.csv").write_text("item,user_id,timestamp\na,u,1\n")
    with pytest.raises(DataError, match=r"H.csv: header is .*missing \['item_id'\]"):
        load_interactions(str(tmp_path), "H")
    (tmp_path / "T.csv").write_text("item_id,user_id,timestamp\na,u,yesterday\n")
    with pytest.raises(DataError, match=r"T.csv: timestamp 'yesterday' on line 2 .*integer timestamps"):
        load_interactions(str(tmp_path), "T")


def _member_data(cache, name):
    """(start, end) of the bytes of member ``name`` (an .npy) inside the uncompressed .npz ``cache``."""
    import struct
    import zipfile
    info = zipfile.ZipFile(cache).getinfo(name)
    raw = cache.read_bytes()
    n, e = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + n + e
    return start, start + info.compress_size


@pytest.mark.parametrize("kind", ["two rows swapped", "bytes flipped", "header damaged", "cut by 64 bytes"])
def test_a_damaged_data_cache_is_rebuilt_with_a_warning(tmp_path, caplog, kind):
    """The prepared-data cache is an .npz, whose members carry the CRC-32 of their bytes (zip), checked as every
    member is read: each damage ends in a warning and a rebuild from the CSV, never in other interactions."""
    (tmp_path / "C.csv").write_text(CSV)
    first = load_interactions(str(tmp_path), "C")
    cache = next((tmp_path / ".pixelrec_cache").glob("C-*.npz"))
    raw = bytearray(cache.read_bytes())
    start, end = _member_data(cache, "items.npy")
    if kind == "two rows swapped":  # the last two entries of the items array, which differ
        a, b = end - 16, end - 8
        assert raw[a:b] != raw[b:end]
        raw[a:b], raw[b:end] = raw[b:end], raw[a:b]
    elif kind == "bytes flipped":
        raw[end - 5] ^= 0xFF
    elif kind == "header damaged":
        raw[start + 11:start + 13] = b"\x00\x07"
    else:
        raw = raw[:-64]
    cache.write_bytes(bytes(raw))
    with caplog.at_level("WARNING"):
        again = load_interactions(str(tmp_path), "C")
    assert any("is unreadable" in r.getMessage() and "rebuilding it" in r.getMessage() for r in caplog.records)
    assert np.array_equal(again.items, first.items) and np.array_equal(again.users, first.users)
    assert again.item_tokens.to_list() == first.item_tokens.to_list()
    assert load_interactions(str(tmp_path), "C").items.tolist() == first.items.tolist()  # the rebuilt cache


def test_gathers_in_blocks_equal_one_gather(monkeypatch):
    """Big gathers run in blocks of rows to bound their temporaries; the result must not depend on the blocks."""
    from REC.data import split as split_module
    rng = np.random.default_rng(0)
    values = rng.integers(1, 100, size=500)
    lengths = rng.integers(0, 9, size=60)
    lengths[7] = 40  # one row longer than a block
    starts = rng.integers(0, 500 - 40, size=60)
    whole = values[split_module.ragged_positions(starts, lengths)]
    padded = split_module.left_pad_segments(values, starts, np.minimum(lengths, 6), 6)
    monkeypatch.setattr(split_module, "GATHER_BLOCK", 16)
    assert len(split_module._row_blocks(lengths)) > 5
    assert np.array_equal(split_module.gather_segments(values, starts, lengths), whole)
    assert np.array_equal(split_module.left_pad_segments(values, starts, np.minimum(lengths, 6), 6), padded)


def test_the_cache_is_memory_mapped_so_processes_share_one_copy(tmp_path, caplog):
    """A warm read maps the cache's arrays instead of copying them (DDP ranks of a node then hold the interactions
    once, in the page cache), equal to the prepared ones, without a rebuild."""
    import mmap
    (tmp_path / "C.csv").write_text(CSV)
    first = load_interactions(str(tmp_path), "C")
    with caplog.at_level("WARNING"):
        again = load_interactions(str(tmp_path), "C")
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    for name in ("users", "indptr", "items"):
        mapped = getattr(again, name)
        assert np.array_equal(mapped, getattr(first, name)) and mapped.dtype == np.int64
        assert isinstance(mapped.base, mmap.mmap) or isinstance(getattr(mapped.base, "base", None), mmap.mmap)
        assert not mapped.flags.writeable
    assert again.item_tokens.to_list() == first.item_tokens.to_list()
