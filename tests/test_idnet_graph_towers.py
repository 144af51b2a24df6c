"""SRGNN's batched session graphs, the prefix (PREFIX) and held-out-item (HELD_OUT_ITEM) training
datasets, and LightSANs' padding mask."""
import numpy as np
import pytest
import torch

from REC.data import build_train_batches, sequence_chunks
from REC.data.split import Split
from REC.model import create_model
from REC.model.base import DatasetInfo
from REC.model.IDNet.srgnn import session_graphs
from REC.app.configure import build_config

M = 10


# ------------------------------------------------------------------------------------------ session graphs
def test_session_graphs_match_hand_computed_matrices():
    seqs = torch.tensor([[0, 0, 5, 3, 5, 7],    # 5 repeats: edges 5->3, 3->5, 5->7
                         [0, 0, 0, 0, 4, 4],    # a self-loop
                         [2, 9, 2, 9, 2, 1]])   # no padding; 2->9 and 9->2 repeat but count once
    nodes, alias, a_in, a_out = session_graphs(seqs)
    assert nodes.tolist() == [[3, 5, 7, 0, 0, 0], [4, 0, 0, 0, 0, 0], [1, 2, 9, 0, 0, 0]]
    real = seqs != 0
    assert alias[real].tolist() == [1, 0, 1, 2] + [0, 0] + [1, 2, 1, 2, 1, 0]

    def dense(entries):
        m = torch.zeros(6, 6)
        for (i, j), v in entries.items():
            m[i, j] = v
        return m
    # row i of a_in averages node i's in-neighbours, row i of a_out its out-neighbours
    expected_in = [dense({(0, 1): 1, (1, 0): 1, (2, 1): 1}), dense({(0, 0): 1}),
                   dense({(0, 1): 1, (1, 2): 1, (2, 1): 1})]
    expected_out = [dense({(0, 1): 1, (1, 0): .5, (1, 2): .5}), dense({(0, 0): 1}),
                    dense({(1, 0): .5, (1, 2): .5, (2, 1): 1})]
    torch.testing.assert_close(a_in, torch.stack(expected_in))
    torch.testing.assert_close(a_out, torch.stack(expected_out))


def reference_graph(seq):
    """The original's per-sequence graph construction over the real items, written as plainly as possible."""
    items = [int(x) for x in seq if x != 0]
    node = sorted(set(items))
    n = len(seq)
    u = np.zeros((n, n))
    for a, b in zip(items[:-1], items[1:]):
        u[node.index(a), node.index(b)] = 1
    a_in = (u / np.where(u.sum(0) == 0, 1, u.sum(0))).T
    a_out = u / np.where(u.sum(1) == 0, 1, u.sum(1))[:, None]
    return node + [0] * (n - len(node)), [node.index(x) for x in items], a_in, a_out


def test_session_graphs_equal_a_per_sequence_reference_on_random_batches():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, M + 1, size=64)
    seqs = rng.integers(1, 6, size=(64, M)) * (np.arange(M)[None] >= M - lengths[:, None])
    nodes, alias, a_in, a_out = session_graphs(torch.from_numpy(seqs))
    for r, seq in enumerate(seqs):
        ref_nodes, ref_alias, ref_in, ref_out = reference_graph(seq)
        assert nodes[r].tolist() == ref_nodes
        assert alias[r, M - lengths[r]:].tolist() == ref_alias
        np.testing.assert_allclose(a_in[r].numpy(), ref_in)
        np.testing.assert_allclose(a_out[r].numpy(), ref_out)


# ------------------------------------------------------------------------------------------ datasets
def make_split(lengths, item_num=40, seed=0):
    """Training runs of the given lengths with items distinct within each user."""
    rng = np.random.default_rng(seed)
    items = np.concatenate([rng.permutation(np.arange(1, item_num))[:n] for n in lengths]).astype(np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Split(np.arange(1, len(lengths) + 1), indptr, items, None, None, item_num, len(lengths) + 1)


CONFIG = {"MAX_ITEM_LIST_LENGTH": M, "train_batch_size": 7, "seed": 5}
LENGTHS = [1, 2, 3, 11, 14, 25, 30]  # a lone item, short runs, full chunks, dropped oldest items


def all_examples(dataset):
    batches = [dataset[b] for b in range(len(dataset))]
    return {k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]}


def real_items(chunk):
    return [int(x) for x in chunk if x != 0]


def left_pad(values, width):
    return [0] * (width - len(values)) + list(values)


def test_prefix_dataset_yields_every_prefix_once():
    split = make_split(LENGTHS)
    chunks = [real_items(c) for c in sequence_chunks(split, M)]
    data = build_train_batches("PREFIX", split, CONFIG)
    got = all_examples(data)
    assert len(got["target"]) == data.n_examples == sum(len(c) - 1 for c in chunks)
    expected = sorted((tuple(left_pad(c[:end], M)), c[end]) for c in chunks for end in range(1, len(c)))
    assert sorted(zip(map(tuple, got["items"].tolist()), got["target"].tolist())) == expected
    prefix = np.concatenate([got["items"], got["target"][:, None]], 1)
    assert (got["negatives"] > 0).all() and not (got["negatives"][:, None] == prefix).any()


def test_held_out_item_dataset_excludes_the_target_position_and_avoids_the_chunk():
    split = make_split(LENGTHS)
    chunks = [real_items(c) for c in sequence_chunks(split, M)]
    data = build_train_batches("HELD_OUT_ITEM", split, CONFIG)
    got = all_examples(data)
    expected = sorted((tuple(left_pad(c[:i] + c[i + 1:], M)), c[i]) for c in chunks if len(c) > 1
                      for i in range(len(c)))
    assert sorted(zip(map(tuple, got["items"].tolist()), got["target"].tolist())) == expected
    # history + target is the whole chunk (items are distinct per user), so this is "avoids the chunk"
    chunk = np.concatenate([got["items"], got["target"][:, None]], 1)
    assert (got["negatives"] > 0).all() and not (got["negatives"][:, None] == chunk).any()


def test_training_batches_are_reproducible_per_epoch():
    split = make_split(LENGTHS)
    for input_type in ("PREFIX", "HELD_OUT_ITEM"):
        a, b = build_train_batches(input_type, split, CONFIG), build_train_batches(input_type, split, CONFIG)
        a.set_epoch(3), b.set_epoch(3)
        for k, v in a[1].items():
            assert torch.equal(v, b[1][k])


# ------------------------------------------------------------------------------------------ padding
def small_model(name, *overrides):
    cfg = build_config([f"IDNet/{name.lower()}.yaml", "overall/ID.yaml"],
                       ["--embedding_size=32", f"--MAX_ITEM_LIST_LENGTH={M}", *overrides])
    torch.manual_seed(0)
    model = create_model(name, cfg, DatasetInfo(50, 10))
    return model.eval()


@pytest.mark.parametrize("name,overrides", [("LightSANs", ["--n_heads=2", "--n_layers=2"]),
                                            ("SRGNN", ["--step=2"])])
def test_output_does_not_depend_on_the_padding_in_front(name, overrides):
    model = small_model(name, *overrides)
    lengths = torch.tensor([1, 2, 4, 5])
    seq = torch.randint(1, 50, (4, M)) * (torch.arange(M)[None] >= M - lengths[:, None])
    with torch.no_grad():
        full = model.user_representations({"item_seq": seq})
        for keep in (5, 7):  # drop leading columns that are padding in every row
            trimmed = model.user_representations({"item_seq": seq[:, M - keep:]})
            torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-5)
