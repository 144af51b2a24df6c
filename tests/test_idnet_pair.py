"""PAIR models (MF, LightGCN): negatives avoid the whole history, epoch coverage across ranks, the LightGCN graph.

Model modules are imported directly (not through the registry) so these tests do not depend on other models.
"""
from collections import Counter

import numpy as np
import pytest
import torch

from REC.data import build_train_batches, leave_one_out, load_interactions
from REC.model.base import DatasetInfo
from REC.model.IDNet.lightgcn import LightGCN, normalized_adjacency
from REC.app.configure import build_config
from REC.utils.batch_keys import ITEMS, NEGATIVES, USER_ID


def pair_config(seq_data, name="mf", *extra):
    return build_config([f"IDNet/{name}.yaml", "overall/ID.yaml"],
                        [f"--data_path={seq_data}", "--dataset=Seq", "--embedding_size=16", *extra])


@pytest.fixture(scope="module")
def split(seq_data):
    return leave_one_out(load_interactions(str(seq_data), "Seq"))


def history_sets(split):
    ind = split.train_indptr
    return {int(u): set(split.train_items[ind[r]:ind[r + 1]].tolist()) for r, u in enumerate(split.train_users)}


def test_negatives_avoid_the_whole_training_history(seq_data, split):
    cfg = pair_config(seq_data, "mf", "--train_batch_size=500")
    batches = build_train_batches("PAIR", split, cfg)
    history = history_sets(split)
    for b in range(len(batches)):
        batch = batches[b]
        users, items, neg = (batch[k].numpy() for k in ("user_id", "items", "negatives"))
        assert batch["user_id"].dtype == batch["items"].dtype == batch["negatives"].dtype == torch.int64
        assert ((neg >= 1) & (neg < split.item_num)).all()
        for u, i, n in zip(users, items, neg):
            assert i in history[u] and n not in history[u]
    assert np.array_equal(batches[0]["negatives"].numpy(), batches[0]["negatives"].numpy())  # repeatable


def test_a_user_with_every_item_is_refused(tmp_path):
    rows = [(item, "u1", t) for t, item in enumerate(["a", "b", "a", "b"])] + [("a", "u2", 9)]
    (tmp_path / "Full.csv").write_text("item_id,user_id,timestamp\n" + "".join(f"{i},{u},{t}\n" for i, u, t in rows))
    split = leave_one_out(load_interactions(str(tmp_path), "Full"))
    with pytest.raises(ValueError, match="every item"):
        build_train_batches("PAIR", split, {"train_batch_size": 4, "seed": 0})


@pytest.mark.parametrize("batch_size", [64, 1000])
def test_every_interaction_once_per_epoch_across_two_ranks(seq_data, split, batch_size):
    cfg = pair_config(seq_data, "mf", f"--train_batch_size={batch_size}")
    expected = Counter(zip(np.repeat(split.train_users, np.diff(split.train_indptr)).tolist(),
                           split.train_items.tolist()))
    for epoch in (0, 3):
        parts = [build_train_batches("PAIR", split, cfg, rank=r, world_size=2) for r in range(2)]
        seen = Counter()
        for p in parts:
            p.set_epoch(epoch)
            for b in range(len(p)):
                seen.update(zip(p[b]["user_id"].tolist(), p[b]["items"].tolist()))
        assert len(parts[0]) == len(parts[1])
        n = len(split.train_items)
        # DistributedSampler-style padding repeats the permutation's head when n is odd
        assert sum(seen.values()) == n + n % 2
        assert sum((seen - expected).values()) == n % 2 and not expected - seen


def tiny_graph():
    # users 1, 2 (user_num 3 with padding row 0); items 1..3 (item_num 4); user 1 saw item 1 twice
    users, items = np.array([1, 1, 1, 2, 2]), np.array([1, 1, 2, 2, 3])
    return users, items, 3, 4


def test_normalized_adjacency_equals_a_dense_hand_computation():
    users, items, user_num, item_num = tiny_graph()
    n = user_num + item_num
    a = np.zeros((n, n))
    for u, i in zip(users, items):  # one edge each way per interaction, duplicates included
        a[u, user_num + i] += 1
        a[user_num + i, u] += 1
    deg = np.maximum(a.sum(1), 1)
    expected = a / np.sqrt(deg)[:, None] / np.sqrt(deg)[None, :]
    got = normalized_adjacency(users, items, user_num, item_num).to_dense().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # hand values: deg(user 1) = 3, deg(item 1) = 2, so entry (user 1, item 1) = 2 / sqrt(3 * 2)
    assert got[1, user_num + 1] == pytest.approx(2 / np.sqrt(6))
    assert got[0].sum() == 0 and got[user_num].sum() == 0  # padding rows are isolated


def test_propagation_equals_dense_products_and_its_gradient_too():
    users, items, user_num, item_num = tiny_graph()
    torch.manual_seed(0)
    model = LightGCN({"embedding_size": 5, "n_layers": 1, "propagation": "step"}, DatasetInfo.from_pairs(item_num, user_num, users, items))
    dense = model.adjacency.to_dense()
    e0 = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    u, i = model.propagate()
    torch.testing.assert_close(torch.cat([u, i]), (e0 + dense @ e0) / 2)

    model.n_layers = 2
    (torch.cat(model.propagate()) ** 2).sum().backward()
    got = model.user_embedding.weight.grad.clone()
    leaf = e0.detach().requires_grad_()
    ((leaf + dense @ leaf + dense @ (dense @ leaf)) / 3).pow(2).sum().backward()
    torch.testing.assert_close(got, leaf.grad[:user_num])


def test_lightgcn_evaluation_cache_follows_the_weights(seq_data, split):
    cfg = pair_config(seq_data, "lightgcn")
    model = LightGCN(cfg, DatasetInfo.from_split(split)).eval()
    batch = {"user_id": torch.tensor([1, 2, 3])}
    with torch.no_grad():
        model.item_representations()
        before = model.user_representations(batch)
        model.train()
        model.user_embedding.weight.add_(1.0)
        model.eval()
        model.item_representations()
        after = model.user_representations(batch)
    torch.testing.assert_close(after, model.propagate()[0][batch["user_id"]])
    assert not torch.allclose(before, after)


def test_lightgcn_survives_to_and_state_dict(seq_data, split):
    cfg = pair_config(seq_data, "lightgcn")
    model = LightGCN(cfg, DatasetInfo.from_split(split))
    assert all("adjacency" not in k for k in model.state_dict())  # rebuilt from the data, never checkpointed
    moved = model.to(torch.float64)
    assert moved is model and model.adjacency.dtype == torch.float64 and model.adjacency.layout == torch.sparse_csr


def test_mf_towers_train_and_score(seq_data, split):
    from REC.model.IDNet.mf import MF
    cfg = pair_config(seq_data, "mf", "--mlp_hidden_size=[12, 8]", "--dropout_prob=0.1", "--train_batch_size=32")
    torch.manual_seed(0)
    model = MF(cfg, DatasetInfo.from_split(split))
    loss = model(build_train_batches("PAIR", split, cfg)[0])
    loss.backward()
    assert torch.isfinite(loss) and model.user_tower[1].weight.grad is not None
    model.eval()
    with torch.no_grad():
        assert model.item_representations().shape == (split.item_num, 8)
        assert model.user_representations({"user_id": torch.tensor([1, 2])}).shape == (2, 8)


def test_lightgcn_trains_under_autocast(seq_data, split):
    cfg = pair_config(seq_data, "lightgcn", "--train_batch_size=32")
    model = LightGCN(cfg, DatasetInfo.from_split(split))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the sparse products opt out and run in fp32
        loss = model(build_train_batches("PAIR", split, cfg)[0])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(model.item_embedding.weight.grad).all()


def nonzero_rows(grad):
    return set(torch.nonzero(grad.abs().sum(1)).reshape(-1).tolist())


def test_epoch_propagation_propagates_once_per_epoch_and_trains_the_batch_rows(seq_data, split):
    """propagation: epoch: at an epoch's start the loss is the exact one (the stored layers are the current
    weights'); a step's gradient reaches only the batch's own rows (step's reaches their graph neighbours too); the
    epoch's later steps reuse the stored layers and the next epoch (model.train()) propagates again."""
    info = DatasetInfo.from_split(split)
    models = {}
    for mode in ("step", "epoch"):
        torch.manual_seed(0)
        models[mode] = LightGCN(pair_config(seq_data, "lightgcn", "--train_batch_size=16", f"--propagation={mode}"),
                                info).train()
    assert models["step"].reads_item_table_whole and not models["epoch"].reads_item_table_whole
    batches = build_train_batches("PAIR", split, pair_config(seq_data, "lightgcn", "--train_batch_size=16"))
    batch = batches[0]
    losses = {mode: model(batch) for mode, model in models.items()}
    torch.testing.assert_close(losses["epoch"], losses["step"], rtol=1e-5, atol=1e-6)
    for loss in losses.values():
        loss.backward()
    users = set(batch[USER_ID].tolist())
    items = set(batch[ITEMS].tolist()) | set(batch[NEGATIVES].reshape(-1).tolist())
    cached, exact = models["epoch"], models["step"]
    assert nonzero_rows(cached.user_embedding.weight.grad) <= users
    assert nonzero_rows(cached.item_embedding.weight.grad) <= items
    assert not nonzero_rows(exact.item_embedding.weight.grad) <= items  # the exact gradient crosses the graph

    calls, propagate = [], cached._layers
    cached._layers = lambda with_ego: calls.append(with_ego) or propagate(with_ego)
    with torch.no_grad():
        cached.user_embedding.weight.add_(0.5)  # an optimizer step: the stored layers now lag the weights
        stale = cached(batch)
        assert calls == [] and not torch.allclose(stale, _exact_loss(cached, batch))
        cached.train()  # the next epoch
        torch.testing.assert_close(cached(batch), _exact_loss(cached, batch), rtol=1e-5, atol=1e-6)
    assert calls.count(False) == 1  # one propagation of the stored layers (the True ones are _exact_loss's)


def _exact_loss(model, batch):
    """The loss of ``model``'s current weights with an exact propagation (what propagation: step computes)."""
    from REC.model.base import bpr_loss
    users, items = model.propagate()
    u = users[batch[USER_ID]]
    return bpr_loss((u * items[batch[ITEMS]]).sum(-1), (u * items[batch[NEGATIVES]]).sum(-1)).mean()
