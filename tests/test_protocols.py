"""Cold-start and few-shot protocols (REC/data/protocols.py) and the popularity buckets of every evaluation, on
the synthetic sequential log of conftest.py (301 users, 120 items) written to disk."""
import json

import numpy as np
import pytest
import torch

from REC.data import DataError, EvalBatches, build_train_batches, leave_one_out, load_interactions, prepare_split
from REC.data.protocols import (COLD_ITEMS_FILE, PROTOCOL_FILE, apply_protocols, hold_out_items, keep_training_users,
                                read_item_file, training_users)
from REC.data.split import Split
from REC.data.training import TRAIN_DATASETS, sample_negatives
from REC.evaluator import FullRankingEvaluator
from REC.evaluator.ranking import bucket_names
from REC.model import create_model
from REC.model.base import DatasetInfo
from REC.app.configure import build_config

from .conftest import run_main

INPUT_TYPES = sorted(TRAIN_DATASETS)  # every registered training-example type, a new one included
assert len(INPUT_TYPES) >= 5, INPUT_TYPES


def config(folder, *overrides, model="IDNet/bert4rec.yaml"):  # BERT4Rec's config has every key the datasets read
    return build_config([model, "overall/ID.yaml"], [f"--data_path={folder}", "--dataset=Seq",
                                                    "--train_batch_size=32", *overrides])


@pytest.fixture(scope="module")
def base(seq_data):
    inter = load_interactions(str(seq_data), "Seq")
    return inter, leave_one_out(inter)


@pytest.fixture(scope="module")
def cold(seq_data):
    """(config, split) of the cold_items protocol holding out 20% of the items."""
    cfg = config(seq_data, "--cold_item_ratio=0.2")
    return cfg, prepare_split(cfg)[1]


def rows_of(indptr, values):
    return [values[a:b].tolist() for a, b in zip(indptr[:-1], indptr[1:])]


# ----------------------------------------------------------------------------------------------- cold items
def test_standard_protocol_is_the_same_split(seq_data, base):
    inter, split = base
    assert apply_protocols(split, inter.item_tokens, config(seq_data)) is split
    assert split.negative_pool() is None


def test_cold_split_removes_held_out_items_and_keeps_the_rest(base, cold):
    _, split = base
    _, c = cold
    held = set(c.cold_items.tolist())
    assert len(held) == round(0.2 * (split.item_num - 1))
    assert not np.isin(c.train_items, c.cold_items).any()
    # every user keeps the other training interactions, in order
    assert np.array_equal(c.train_users, split.train_users)
    assert rows_of(c.train_indptr, c.train_items) == [[i for i in row if i not in held]
                                                      for row in rows_of(split.train_indptr, split.train_items)]
    for name in ("valid", "test"):
        full, ev = getattr(split, name), getattr(c, name)
        expected = [k for k in range(len(full)) if full.targets[k] in held]
        histories = {k: [i for i in full.history(k).tolist() if i not in held] for k in expected}
        expected = [k for k in expected if histories[k]]  # users left without a history item are not evaluated
        assert ev.users.tolist() == full.users[expected].tolist() and len(ev) > 0
        assert np.isin(ev.targets, c.cold_items).all()
        assert [ev.history(k).tolist() for k in range(len(ev))] == [histories[k] for k in expected]
        assert c.protocol["cold_items"][f"{name}_users"] == len(ev)
    assert c.protocol["cold_items"]["train_interactions_removed"] == len(split.train_items) - len(c.train_items)
    assert np.array_equal(c.negative_pool(), np.setdiff1d(np.arange(1, split.item_num), c.cold_items))


@pytest.mark.parametrize("input_type", INPUT_TYPES)
def test_held_out_items_are_in_no_training_batch(cold, input_type):
    cfg, split = cold
    batches = build_train_batches(input_type, split, cfg)
    seen = np.zeros(split.item_num, dtype=bool)
    for epoch in range(3):
        batches.set_epoch(epoch)
        for b in range(len(batches)):
            batch = batches[b]
            for key in batches.item_keys:  # user ids and the bool target_mask are no item ids
                v = batch[key].numpy()
                assert not np.isin(v, split.cold_items).any(), (input_type, key)
                if key == "negatives":
                    seen[v[v > 0]] = True
    # the negatives do cover the items that remain, so the check above is not passed by an empty draw
    assert seen[split.negative_pool()].mean() > 0.9


def test_sample_negatives_pool():
    rng = np.random.default_rng(0)
    pool = np.array([3, 5, 7, 9])
    avoid = np.array([[3, 5, 0], [7, 0, 0]])
    neg = sample_negatives(rng, avoid, 10, per_row=50, pool=pool)
    assert set(neg[0]) == {7, 9} and set(neg[1]) == {3, 5, 9}
    # without a pool the draw is the plain one (runs without a protocol keep their random stream)
    a = sample_negatives(np.random.default_rng(1), np.zeros((4, 3), np.int64), 50)
    assert np.array_equal(a, np.random.default_rng(1).integers(1, 50, size=(4, 3)))


def test_held_out_items_are_no_graph_edge(seq_data, cold):
    _, split = cold
    cfg = config(seq_data, "--cold_item_ratio=0.2", "--embedding_size=8", model="IDNet/lightgcn.yaml")
    model = create_model("LightGCN", cfg, DatasetInfo.from_split(split))
    adj = model.adjacency
    crow, cols = adj.crow_indices().numpy(), adj.col_indices().numpy()
    cold_nodes = split.user_num + split.cold_items
    assert (np.diff(crow)[cold_nodes] == 0).all() and not np.isin(cols, cold_nodes).any()
    assert adj._nnz() > 0


def test_cold_item_file_reads_original_ids(tmp_path, base, cold):
    inter, _ = base
    _, c = cold
    tokens = inter.item_tokens.to_list()
    path = tmp_path / "cold.txt"
    path.write_text("\n".join(tokens[i] for i in c.cold_items[::-1]) + "\n\n")
    assert np.array_equal(read_item_file(path, inter.item_tokens, "Seq"), c.cold_items)


def test_cold_items_that_leave_nothing_to_measure_are_refused(base):
    _, split = base
    with pytest.raises(DataError, match="hold out all 120 items"):
        hold_out_items(split, np.arange(1, split.item_num))
    never_a_target = np.setdiff1d(np.arange(1, split.item_num), np.r_[split.valid.targets, split.test.targets])
    if len(never_a_target):
        with pytest.raises(DataError, match="leaves 0 users to validate and 0 to test"):
            hold_out_items(split, never_a_target)


# ------------------------------------------------------------------------------------------ few-shot users
def test_train_user_ratio_keeps_a_seeded_subset(base):
    _, split = base
    n = len(training_users(split))
    kept = keep_training_users(split, 0.3, None, seed=7)
    users = training_users(kept)
    assert len(users) == round(0.3 * n)
    rows = dict(zip(split.train_users.tolist(), rows_of(split.train_indptr, split.train_items)))
    for u, row in zip(kept.train_users.tolist(), rows_of(kept.train_indptr, kept.train_items)):
        assert row == (rows[u] if u in set(users.tolist()) else [])
    assert kept.valid is split.valid and kept.test is split.test  # evaluation still covers every user
    assert np.array_equal(training_users(keep_training_users(split, 0.3, None, seed=7)), users)
    assert not np.array_equal(training_users(keep_training_users(split, 0.3, None, seed=8)), users)
    smaller = training_users(keep_training_users(split, 0.1, None, seed=7))
    assert np.isin(smaller, users).all()  # one seeded order: a smaller ratio keeps a subset
    capped = training_users(keep_training_users(split, 0.3, 20, seed=7))
    assert len(capped) == 20 and np.isin(capped, users).all()
    assert kept.protocol["train_users"]["users_kept"] == len(users)


def test_protocols_combine(seq_data, base):
    _, split = base
    _, both = prepare_split(config(seq_data, "--cold_item_ratio=0.2", "--train_user_ratio=0.5"))
    assert not np.isin(both.train_items, both.cold_items).any()
    assert len(training_users(both)) <= round(0.5 * len(training_users(split)))
    assert set(both.protocol) == {"settings", "train_users", "cold_items"}


# ---------------------------------------------------------------------------------------- popularity buckets
def test_bucket_names():
    assert bucket_names([0, 1, 5, 20]) == ["0", "1-4", "5-19", "20+"]
    assert bucket_names([0, 3]) == ["0-2", "3+"]


def evaluator_for(split: Split, buckets):
    counts = np.bincount(split.train_items, minlength=split.item_num)
    return FullRankingEvaluator(["Recall", "NDCG", "MRR"], [5, 10], 7, torch.device("cpu"),
                                item_counts=counts, popularity_buckets=buckets)


def test_buckets_partition_users_and_average_to_the_overall_figure(seq_data, base):
    _, split = base
    cfg = config(seq_data, "--embedding_size=16", "--n_heads=2", "--n_layers=1", model="IDNet/sasrec.yaml")
    torch.manual_seed(0)
    model = create_model("SASRec", cfg, DatasetInfo.from_split(split))
    batches = EvalBatches(split.test, cfg["MAX_ITEM_LIST_LENGTH"], 64)  # several batches: sums across them
    plain = FullRankingEvaluator(["Recall", "NDCG", "MRR"], [5, 10], 7, torch.device("cpu")).evaluate(model, batches)
    with_buckets = evaluator_for(split, [0, 1, 5, 20])
    evaluation = with_buckets.evaluate(model, batches)
    overall, buckets = evaluation.metrics, evaluation.buckets
    assert plain.buckets is None and overall == plain.metrics  # the overall figures do not change
    assert list(buckets) == ["0", "1-4", "5-19", "20+"]
    assert sum(b["users"] for b in buckets.values()) == len(split.test)
    counts = np.bincount(split.train_items, minlength=split.item_num)[split.test.targets]
    assert [b["users"] for b in buckets.values()] == [int(((counts >= lo) & (counts < hi)).sum())
                                                      for lo, hi in [(0, 1), (1, 5), (5, 20), (20, 10 ** 9)]]
    assert sum(1 for b in buckets.values() if b["users"]) >= 2  # the check below mixes buckets
    for key, value in overall.items():
        mean = sum(b["users"] * b[key] for b in buckets.values() if b["users"]) / len(split.test)
        assert mean == pytest.approx(value, abs=1e-6), key
    assert evaluator_for(split, []).evaluate(model, batches) == plain  # no bucket edges: no buckets


def test_buckets_on_off_end_to_end(seq_data, tmp_path):
    args = ["--config_file", "IDNet/pop.yaml", "overall/ID.yaml", f"--data_path={seq_data}", "--dataset=Seq",
            f"--output_dir={tmp_path}", "--show_progress=false"]
    on, off = run_main(args).result, run_main([*args, "--popularity_buckets=[]"]).result
    assert on["test"] == off["test"] and on["best_valid"] == off["best_valid"]
    assert off["test_buckets"] is None and off["best_valid_buckets"] is None
    assert sum(b["users"] for b in on["test_buckets"].values()) == 301
    assert sum(b["users"] for b in on["best_valid_buckets"].values()) == 301


# ------------------------------------------------------------------------------------------ command line
def test_cold_run_saves_its_split(seq_data, tmp_path, base):
    inter, _ = base
    run = run_main(["--config_file", "IDNet/pop.yaml", "overall/ID.yaml", f"--data_path={seq_data}",
                    "--dataset=Seq", f"--output_dir={tmp_path}", "--show_progress=false", "--cold_item_ratio=0.2"])
    run_dir, result = run.run_dir, run.result
    held = (run_dir / COLD_ITEMS_FILE).read_text().split()
    sizes = json.loads((run_dir / PROTOCOL_FILE).read_text())["cold_items"]
    assert len(held) == sizes["items_held_out"] == 24 and set(held) <= set(inter.item_tokens.to_list()[1:])
    assert result["protocol"]["cold_items"] == sizes
    # every evaluated target is held out: all of them in bucket "0", and popularity never ranks one
    assert result["test_buckets"]["0"]["users"] == sizes["test_users"] > 0
    assert result["test"]["recall@10"] == 0.0
    assert "items_held_out" in (run_dir / "log.txt").read_text()
    # the saved list, given back as cold_item_file, reproduces the split
    again = run_main(["--config_file", "IDNet/pop.yaml", "overall/ID.yaml", f"--data_path={seq_data}",
                      "--dataset=Seq", f"--output_dir={tmp_path}", "--show_progress=false",
                      f"--cold_item_file={run_dir / COLD_ITEMS_FILE}"]).result
    assert again["protocol"]["cold_items"] == sizes


def test_unknown_cold_item_ids_are_a_clear_error(seq_data, tmp_path):
    path = tmp_path / "cold.txt"
    path.write_text("i1\nnope-1\ni2\nnope-2\nnope-3\n")
    proc, _ = run_main(["--config_file", "IDNet/pop.yaml", "overall/ID.yaml", f"--data_path={seq_data}",
                        "--dataset=Seq", f"--output_dir={tmp_path}", f"--cold_item_file={path}"], check=False)
    assert proc.returncode == 2
    assert str(path) in proc.stderr and "3 of its 5 item ids" in proc.stderr and "'nope-1', 'nope-2'" in proc.stderr
    assert not any(tmp_path.glob("Pop-*")), "no run directory for a refused run"


@pytest.mark.slow
def test_trained_cold_run_on_two_processes(seq_data, tmp_path):
    """A trained model under cold_items, on 2 processes: the bucket table is reduced across ranks."""
    common = ["--config_file", "IDNet/sasrec.yaml", "overall/ID.yaml", f"--data_path={seq_data}", "--dataset=Seq",
              f"--output_dir={tmp_path}", "--show_progress=false", "--epochs=1", "--embedding_size=16",
              "--n_heads=2", "--n_layers=1", "--cold_item_ratio=0.2"]
    two = run_main([*common, "--device", "cpu:2"]).result
    assert two["world_size"] == 2
    assert two["test_buckets"]["0"]["users"] == two["protocol"]["cold_items"]["test_users"] > 0
    assert sum(b["users"] for b in two["test_buckets"].values()) == two["test_buckets"]["0"]["users"]
    for key, value in two["test"].items():  # every user is in bucket "0": its figures are the overall ones
        assert two["test_buckets"]["0"][key] == pytest.approx(value, abs=1e-6)
