"""GRU4Rec, NextItNet and BERT4Rec specifics: padding cannot leak, the masked batches, the mask-token user vector.

Generic checks (shapes, decreasing loss, beating Pop) are in test_models.py.
"""
import numpy as np
import pytest
import torch

from REC.data import build_train_batches, leave_one_out, load_interactions, sequence_chunks
from REC.model import create_model
from REC.model.base import DatasetInfo
from REC.app.configure import build_config

ITEM_NUM = 40
SMALL = {
    "GRU4Rec": ["--embedding_size=16", "--num_layers=2"],
    "NextItNet": ["--embedding_size=16", "--block_num=2", "--final_layer=true"],
    "BERT4Rec": ["--embedding_size=16", "--n_heads=2", "--n_layers=1"],
}


def small_model(name, *extra):
    cfg = build_config([f"IDNet/{name.lower()}.yaml", "overall/ID.yaml"], [*SMALL[name], *extra])
    torch.manual_seed(0)
    model = create_model(name, cfg, DatasetInfo(ITEM_NUM, 10))
    return cfg, model.eval()


def left_padded(items, width):
    return torch.tensor([[0] * (width - len(items)) + list(items)])


@pytest.mark.parametrize("name", ["GRU4Rec", "NextItNet"])
def test_padding_length_and_pad_embedding_do_not_change_outputs(name):
    _, model = small_model(name)
    items = [5, 9, 3]
    with torch.no_grad():
        unpadded = model.encode(torch.tensor([items]))
        for width in (6, 10):
            out = model.encode(left_padded(items, width))
            torch.testing.assert_close(out[:, -3:], unpadded, rtol=1e-5, atol=1e-5)
        before = model.user_representations({"item_seq": left_padded(items, 10)})
        model.item_embedding.weight[0] = torch.randn(model.item_embedding.weight.shape[1]) * 10
        after = model.user_representations({"item_seq": left_padded(items, 10)})
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(before, unpadded[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["GRU4Rec", "NextItNet"])
def test_training_loss_ignores_the_padding(name):
    """The same chunk padded differently (a shorter M) gives the same loss."""
    _, model = small_model(name)
    items, negs = [5, 9, 3, 7], [0, 11, 12, 13]
    losses = [model({"items": left_padded(items, w), "negatives": left_padded(negs, w),
                     "target_mask": left_padded(negs, w) != 0}).item() for w in (5, 11)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


@pytest.fixture(scope="module")
def masked(seq_data):
    cfg = build_config(["IDNet/bert4rec.yaml", "overall/ID.yaml"],
                       [f"--data_path={seq_data}", "--dataset=Seq", "--train_batch_size=100000"])
    split = leave_one_out(load_interactions(str(seq_data), "Seq"))
    batches = build_train_batches("MASKED", split, cfg)
    assert len(batches) == 1  # the whole epoch in one batch
    return cfg, split, batches[0]


def test_masked_batch_layout(masked):
    cfg, split, batch = masked
    masked_items, items, neg = (batch[k].numpy() for k in ("masked_items", "items", "negatives"))
    assert masked_items.shape == items.shape == neg.shape == (len(items), cfg["MAX_ITEM_LIST_LENGTH"] + 1)
    assert sorted(map(tuple, items)) == sorted(map(tuple, sequence_chunks(split, cfg["MAX_ITEM_LIST_LENGTH"])))
    is_masked = masked_items == split.item_num
    assert not (is_masked & (items == 0)).any()  # padding is never masked
    np.testing.assert_array_equal(masked_items[~is_masked], items[~is_masked])
    np.testing.assert_array_equal(neg != 0, is_masked)  # a negative exactly where a position is masked
    assert (neg[is_masked] < split.item_num).all()
    assert not (neg[:, :, None] == items[:, None, :]).any(-1)[is_masked].any()  # never an item of its chunk


def test_mask_frequency_follows_mask_ratio(masked):
    cfg, split, batch = masked
    real = batch["items"] != 0
    assert real.sum() > 2000
    rate = (batch["masked_items"] == split.item_num)[real].float().mean().item()
    assert cfg["mask_ratio"] == 0.6 and abs(rate - 0.6) < 0.03
    assert (batch["masked_items"][:, -1] == split.item_num).any()  # the last position is not exempt


def test_bert4rec_user_vector_is_the_mask_token_output():
    _, model = small_model("BERT4Rec")
    item_seq = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 5, 9, 3], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
    seen = []
    encode = model.encode
    model.encode = lambda ids, *a, **k: seen.append(ids) or encode(ids, *a, **k)
    with torch.no_grad():
        users = model.user_representations({"item_seq": item_seq})
    (ids,) = seen
    assert ids.shape == (2, 11) and (ids[:, -1] == ITEM_NUM).all()
    torch.testing.assert_close(ids[:, :-1], item_seq)
    torch.testing.assert_close(users, encode(ids)[:, -1], rtol=1e-5, atol=1e-5)
    assert model.item_representations().shape == (ITEM_NUM, 16)  # the mask row is not a candidate


def test_bert4rec_padding_is_masked_in_attention():
    _, model = small_model("BERT4Rec")
    seq = left_padded([5, 9, 3], 10)
    with torch.no_grad():
        before = model.user_representations({"item_seq": seq})
        model.item_embedding.weight[0] = torch.randn(16) * 10
        after = model.user_representations({"item_seq": seq})
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_bert4rec_loss_sums_masked_positions_over_sequences():
    _, model = small_model("BERT4Rec")
    items = left_padded([5, 9, 3, 7], 11).repeat(2, 1)
    masked_items, neg = items.clone(), torch.zeros_like(items)
    masked_items[0, -1], neg[0, -1] = ITEM_NUM, 11  # one masked position in the batch of two
    with torch.no_grad():
        loss = model({"masked_items": masked_items, "items": items, "negatives": neg, "target_mask": neg != 0})
        h = model.encode(masked_items)[0, -1]
        w = model.item_embedding.weight
        expected = -torch.nn.functional.logsigmoid(h @ w[7] - h @ w[11]) / 2
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
