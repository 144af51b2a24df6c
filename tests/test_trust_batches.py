"""No silent wrong result in batches: every dataset declares its item-id keys (and PixelNet's cover lookup fails
loudly on an id it has no cover for), negative sampling cannot spin forever, attention masks stay finite in half
precision, and generate_lmdb.py refuses a CSV it cannot read with exit 2."""
import copy
import math
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from REC.data import (TRAIN_DATASETS, EpochBatches, EvalBatches, build_train_batches, prepare_split,
                      register_train_dataset, sample_negatives)
from REC.data.cover_batches import BatchesWithCovers
from REC.data.split import EvalSplit, Split
from REC.data.training.next_item import NextItemBatches
from REC.model.base import DatasetInfo
from REC.model.IDNet.lightsans import LightTransformerEncoder
from REC.model.IDNet.sasrec import SASRec
from REC.model.layers import TransformerEncoder, causal_padding_mask
from REC.model.pixel import CoverItems, PixelItems
from REC.app.configure import build_config
from REC.app.launch import main as launch_main
import generate_lmdb  # the top-level script, called in this process

from .conftest import call_main


# ------------------------------------------------------------------------------------- synthetic id ranges
# Item ids used by the synthetic split are >= FIRST_ITEM and user ids < FIRST_ITEM, and items 1..FIRST_ITEM-1
# are held out (the cold_items pool), so a batch value tells by its range alone whether it is an item id.
FIRST_ITEM, ITEM_NUM, N_USERS = 100, 140, 9
CONFIG = {"MAX_ITEM_LIST_LENGTH": 5, "train_batch_size": 8, "seed": 0, "mask_ratio": 0.5}


def disjoint_split() -> Split:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 15, size=N_USERS - 1)
    train = [rng.integers(FIRST_ITEM, ITEM_NUM, size=n) for n in lengths]
    users = np.arange(1, N_USERS, dtype=np.int64)
    targets = rng.integers(FIRST_ITEM, ITEM_NUM, size=len(users))
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    ev = EvalSplit.from_csr(users, targets, indptr, np.concatenate(train))
    return Split(train_users=users, train_indptr=indptr.copy(), train_items=ev.hist_items.copy(),
                 valid=ev, test=ev, item_num=ITEM_NUM, user_num=N_USERS,
                 cold_items=np.arange(1, FIRST_ITEM, dtype=np.int64))


def keys_holding_item_ids(batches) -> set[str]:
    """Keys whose values are all padding, mask token or items (and some item); fails on a key that mixes."""
    values: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        for key, value in batch.items():
            values.setdefault(key, []).append(value.numpy().ravel())
    found = set()
    for key, parts in values.items():
        v = np.concatenate(parts)
        item_like = (v == 0) | ((v >= FIRST_ITEM) & (v <= ITEM_NUM))
        if item_like.all() and (v >= FIRST_ITEM).any():
            found.add(key)
        else:
            assert not ((v >= FIRST_ITEM) & (v <= ITEM_NUM)).any(), f"key {key!r} mixes item ids and other values"
    return found


@pytest.mark.parametrize("input_type", sorted(TRAIN_DATASETS))
def test_every_training_dataset_declares_exactly_its_item_keys(input_type):
    split = disjoint_split()
    batches = build_train_batches(input_type, split, CONFIG)
    assert isinstance(batches.item_keys, tuple)
    assert set(batches.item_keys) == keys_holding_item_ids(batches[b] for b in range(len(batches))), input_type


def test_eval_batches_declare_their_item_keys():
    split = disjoint_split()
    batches = EvalBatches(split.test, CONFIG["MAX_ITEM_LIST_LENGTH"], 4)
    assert set(batches.item_keys) == keys_holding_item_ids(batches)


def test_a_dataset_without_item_keys_cannot_register():
    class NoKeys(EpochBatches):
        pass

    with pytest.raises(TypeError, match="must declare item_keys"):
        register_train_dataset("TRUST_TEST_NO_KEYS")(NoKeys)
    assert "TRUST_TEST_NO_KEYS" not in TRAIN_DATASETS


def batches_class(name: str, module: str) -> type:
    return type(name, (EpochBatches,), {"item_keys": ("items",), "__module__": module})


@pytest.mark.parametrize("name, module", [("TrustTestBatches", "tests.trust_tests"),   # module name differs
                                          ("TrustTestDataset", "tests.trust_test"),    # class name differs
                                          ("TrusttestBatches", "tests.trust_test")])   # CamelCase differs
def test_a_type_registers_only_from_the_module_and_class_named_after_it(name, module):
    with pytest.raises(ValueError, match=r"input type 'TRUST_TEST' must be built by class TrustTestBatches in a "
                                         rf"module trust_test\.py .*; got {module}\.{name}"):
        register_train_dataset("TRUST_TEST")(batches_class(name, module))
    assert "TRUST_TEST" not in TRAIN_DATASETS


def test_an_input_type_is_upper_snake_case_and_the_matching_names_register():
    with pytest.raises(ValueError, match="must be UPPER_SNAKE_CASE"):
        register_train_dataset("TrustTest")(batches_class("TrustTestBatches", "tests.trust_test"))
    cls = batches_class("TrustTestBatches", "tests.trust_test")
    try:
        assert register_train_dataset("TRUST_TEST")(cls) is cls and TRAIN_DATASETS["TRUST_TEST"] is cls
    finally:
        TRAIN_DATASETS.remove("TRUST_TEST")  # the registry is the whole test process's


def test_every_module_of_the_training_package_registers_its_type():
    """Discovery is by import (REC.utils.registry): every module but base registers the type it is named after."""
    import pkgutil

    import REC.data.training as training

    modules = {m.name for m in pkgutil.iter_modules(training.__path__)} - {"base"}
    assert {t.lower() for t in TRAIN_DATASETS} == modules
    assert all(cls.__module__ == f"REC.data.training.{t.lower()}" for t, cls in TRAIN_DATASETS.items())


def tiny_split() -> Split:
    """Three users, one with a single training item (a chunk with no target) and one longer than a chunk."""
    train = [[3, 5, 7, 2, 9, 4, 8], [6], [1, 10, 11]]
    lengths = [len(t) for t in train]
    users = np.arange(1, 4, dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    ev = EvalSplit.from_csr(users, np.array([11, 2, 5]), indptr, np.concatenate(train).astype(np.int64))
    return Split(train_users=users, train_indptr=indptr.copy(), train_items=ev.hist_items.copy(),
                 valid=ev, test=ev, item_num=13, user_num=4)


@pytest.mark.parametrize("input_type", ["NEXT_ITEM", "MASKED"])
def test_target_mask_marks_exactly_the_positions_that_have_a_negative(input_type):
    """``target_mask`` replaced the rule "a position has a target where its negative is not 0": on every batch of
    several epochs the two agree, negatives stay 0 elsewhere, and the mask is no item key."""
    split = tiny_split()
    cfg = {"MAX_ITEM_LIST_LENGTH": 4, "train_batch_size": 2, "seed": 3, "mask_ratio": 0.5}
    batches = build_train_batches(input_type, split, cfg)
    assert "target_mask" not in batches.item_keys
    n_targets = 0
    for epoch in range(4):
        batches.set_epoch(epoch)
        for b in range(len(batches)):
            batch = batches[b]
            mask, neg, items = batch["target_mask"], batch["negatives"], batch["items"]
            assert mask.dtype == torch.bool and mask.shape == neg.shape == items.shape
            assert torch.equal(mask, neg != 0)
            if input_type == "NEXT_ITEM":  # a target wherever an item and its predecessor are real
                assert torch.equal(mask[:, 1:], (items[:, 1:] != 0) & (items[:, :-1] != 0)) and not mask[:, 0].any()
            else:
                assert torch.equal(mask, batch["masked_items"] == split.item_num)
            n_targets += int(mask.sum())
    assert n_targets > 0


def test_target_mask_passes_through_pixelnet_batches_untouched():
    split = tiny_split()
    cfg = {"MAX_ITEM_LIST_LENGTH": 4, "train_batch_size": 8, "seed": 0}
    plain = build_train_batches("NEXT_ITEM", split, cfg)[0]
    with_covers = BatchesWithCovers(build_train_batches("NEXT_ITEM", split, cfg), FakeStore(), split.item_num)[0]
    assert torch.equal(with_covers["target_mask"], plain["target_mask"])
    ids = torch.cat([plain["items"].reshape(-1), plain["negatives"].reshape(-1)]).unique()
    assert torch.equal(with_covers["cover_ids"], ids[ids > 0])  # the covers are those of the item keys only


# ------------------------------------------------------------------------------------- cover lookups
class TinyEncoder(nn.Module):
    """A stand-in image encoder: the flattened 4x4 cover through one linear layer."""

    input_size, mean, std = 4, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    def __init__(self, d: int):
        super().__init__()
        self.proj = nn.Linear(3 * 4 * 4, d)

    def forward(self, x):
        return self.proj(x.flatten(1))


class FakeStore:
    """CoverStore's ``get``: a cover per id whose pixels are a function of the id."""

    def get(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        return ((ids[:, None, None, None] * 7 + np.arange(48).reshape(1, 3, 4, 4)) % 256).astype(np.uint8)


def tiny_cover_items(mask_id=None) -> CoverItems:
    torch.manual_seed(0)
    return CoverItems({"image_size": 4, "image_norm": "half"}, 8, mask_id, encoder=TinyEncoder(8))


def test_cover_lookup_of_an_id_without_cover_raises():
    items = tiny_cover_items()
    cover_ids = torch.tensor([3, 5, 7])
    with items.batch_source(cover_ids, {"covers": torch.from_numpy(FakeStore().get(cover_ids.numpy()))}):
        assert items(torch.tensor([[0, 3], [7, 5]])).shape == (2, 2, 8)
        for missing in (6, 9):  # 6 sorts between covers (it read 7's row), 9 after the last one
            with pytest.raises(RuntimeError, match=f"item id {missing} .*has no cover in this training batch"):
                items(torch.tensor([[3, missing]]))
    with pytest.raises(RuntimeError, match="no item table"):  # the batch's covers do not outlive their scope
        items(torch.tensor([[3]]))


class PixelSASRecTiny(PixelItems, SASRec):
    """MOSASRec over TinyEncoder (not registered: only these tests build it)."""

    def cover_items(self, config, info, d, mask_id):
        return CoverItems(config, d, mask_id, encoder=TinyEncoder(d))


class ItemsOnly(NextItemBatches):
    item_keys = ("items",)  # wrong on purpose: the negatives are item ids too


def test_a_batch_key_left_out_of_item_keys_stops_training_and_is_named():
    split = disjoint_split()
    cfg = build_config(["PixelNet/sasrec.yaml", "overall/ViT.yaml"],
                       ["--embedding_size=8", "--n_heads=2", "--n_layers=1", "--image_size=4",
                        "--MAX_ITEM_LIST_LENGTH=5", "--train_batch_size=8"])
    torch.manual_seed(0)
    model = PixelSASRecTiny(cfg, DatasetInfo.from_split(split))
    good = BatchesWithCovers(build_train_batches("NEXT_ITEM", split, cfg), FakeStore(), split.item_num)
    assert torch.isfinite(model(good[0]))
    bad = BatchesWithCovers(ItemsOnly(split, cfg), FakeStore(), split.item_num)
    with pytest.raises(RuntimeError, match=r"found under batch key 'negatives'\) has no cover"):
        model(bad[0])


# ------------------------------------------------------------------------------------- negative sampling
def within(seconds: float, fn):
    """fn()'s result, or its exception re-raised; fails (instead of hanging the suite) if it runs longer."""
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 (handed to the test thread)
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still running after {seconds} s: negative sampling does not terminate")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def test_sample_negatives_raises_when_a_row_holds_every_allowed_item():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"no negative can be drawn for 1 of 2 rows: each holds every one of the "
                                         r"9 items a negative may be \(ids 1..9\)"):
        within(10, lambda: sample_negatives(rng, np.array([[1, 2, 3, 4, 5, 6, 7, 8, 9, 0], [1] * 10]), 10))
    with pytest.raises(ValueError, match="2 items a negative may be"):
        within(10, lambda: sample_negatives(rng, np.array([[5, 3, 0]]), 10, per_row=1, pool=np.array([3, 5])))
    # one allowed item left: found, however unlikely each draw is
    assert (within(10, lambda: sample_negatives(rng, np.array([[1, 2, 3, 4, 5, 6, 7, 8]]), 10)) == 9).all()


def write_log(folder: Path, n_items: int) -> None:
    """50 users, each meeting every item once in a seeded order (2 more events for valid and test)."""
    rng = np.random.default_rng(1)
    rows = [f"i{i},u{u},{t}" for u in range(50) for t, i in enumerate(rng.permutation(n_items))]
    (folder / "Small.csv").write_text("item_id,user_id,timestamp\n" + "\n".join(rows) + "\n")


@pytest.mark.parametrize("input_type", sorted(TRAIN_DATASETS))
def test_training_chunk_holding_every_allowed_item_is_an_error_not_a_hang(tmp_path, input_type):
    write_log(tmp_path, 8)
    base = [f"--data_path={tmp_path}", "--dataset=Small", "--MAX_ITEM_LIST_LENGTH=10", "--train_batch_size=16"]

    def build_and_draw(*extra):
        cfg = build_config(["IDNet/bert4rec.yaml", "overall/ID.yaml"], [*base, *extra])
        batches = build_train_batches(input_type, prepare_split(cfg)[1], cfg)
        return [batches[b] for b in range(len(batches))]

    # 8 items, 6 of them in each user's training part: negatives exist
    assert within(30, build_and_draw)
    # half of the items held out: a user's training part holds all 4 that remain
    with pytest.raises(ValueError, match="no negative exists"):
        within(30, lambda: build_and_draw("--cold_item_ratio=0.5"))


def test_sequence_error_names_the_cold_item_ratio(tmp_path):
    write_log(tmp_path, 8)
    cfg = build_config(["IDNet/sasrec.yaml", "overall/ID.yaml"],
                       [f"--data_path={tmp_path}", "--dataset=Small", "--cold_item_ratio=0.5"])
    with pytest.raises(ValueError, match=r"hold every item a negative may be, the 4 of 8 items that the "
                                         r"cold_items protocol does not hold out \(cold_item_ratio=0.5\)"):
        build_train_batches("NEXT_ITEM", prepare_split(cfg)[1], cfg)


# ------------------------------------------------------------------------------------- attention masks
def padded_inputs():
    torch.manual_seed(0)
    seq = torch.tensor([[0, 0, 3, 4, 5], [0, 0, 0, 0, 0], [1, 2, 3, 4, 5], [0, 0, 0, 0, 9]])
    return seq, torch.randn(4, 5, 16)


def plain_attention(q, k, v, attn_mask=None, dropout_p=0.0, **kwargs):
    """SDPA as a kernel with fp32 accumulation and no guard for fully masked rows computes it."""
    scores = q.float() @ k.float().transpose(-1, -2) / math.sqrt(q.shape[-1]) + attn_mask.float()
    return (torch.softmax(scores, -1) @ v.float()).to(q.dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kernel", ["sdpa", "plain"])
def test_attention_with_a_fully_padded_row_is_finite_in_half_precision(dtype, kernel, monkeypatch):
    seq, x = padded_inputs()
    encoder = TransformerEncoder(2, 16, 2, 32, 0.0, 0.0, "gelu", 1e-12).eval()
    with torch.no_grad():
        want = encoder(x, causal_padding_mask(seq))
        if kernel == "plain":
            monkeypatch.setattr(F, "scaled_dot_product_attention", plain_attention)
        got = copy.deepcopy(encoder).to(dtype)(x.to(dtype), causal_padding_mask(seq))
    assert torch.isfinite(got).all()  # padding rows too: a NaN there would reach every row in the next layer
    real = seq != 0
    torch.testing.assert_close(got.float()[real], want[real], atol=0.05 if dtype == torch.float16 else 0.3, rtol=0)


def test_attention_fp32_is_unchanged(monkeypatch):
    """At real positions fp32 gives bit for bit what the original's -1e9 additive mask gave."""
    seq, x = padded_inputs()
    encoder = TransformerEncoder(2, 16, 2, 32, 0.0, 0.0, "gelu", 1e-12).eval()
    sdpa = F.scaled_dot_product_attention

    def with_original_mask(q, k, v, attn_mask=None, **kwargs):
        old = torch.zeros(attn_mask.shape, dtype=q.dtype).masked_fill(attn_mask != 0, -1e9)
        return sdpa(q, k, v, attn_mask=old, **kwargs)

    with torch.no_grad():
        now = encoder(x, causal_padding_mask(seq))
        monkeypatch.setattr(F, "scaled_dot_product_attention", with_original_mask)
        before = encoder(x, causal_padding_mask(seq))
    real = seq != 0
    assert torch.equal(now[real], before[real])


def test_lightsans_attention_with_a_fully_padded_row_is_finite_in_fp16():
    seq, x = padded_inputs()
    torch.manual_seed(0)
    encoder = LightTransformerEncoder(1, 16, 2, 3, 32, 0.0, 0.0, "gelu", 1e-12, 0.02).eval()
    pos = torch.randn(5, 16)
    with torch.no_grad():
        want = encoder(x, pos, seq == 0)
        got = copy.deepcopy(encoder).half()(x.half(), pos.half(), seq == 0)
    assert torch.isfinite(got).all()
    real = seq != 0
    torch.testing.assert_close(got.float()[real], want[real], atol=0.05, rtol=0)


def test_lightsans_fp32_is_unchanged(monkeypatch):
    """In fp32 LightSANs gives bit for bit what the original's additive -1e9 gave (no row here is all padding)."""
    import REC.model.IDNet.lightsans as lightsans

    seq, x = padded_inputs()
    seq[1, -1] = 4
    torch.manual_seed(0)
    encoder = LightTransformerEncoder(2, 16, 2, 3, 32, 0.0, 0.0, "gelu", 1e-12, 0.02).eval()
    pos = torch.randn(5, 16)

    def original(scores, pad):
        return torch.softmax(scores + torch.zeros(pad.shape, dtype=scores.dtype).masked_fill(pad, -1e9), dim=-2)

    with torch.no_grad():
        now = encoder(x, pos, seq == 0)
        monkeypatch.setattr(lightsans, "_masked_softmax_over_sequence", original)
        before = encoder(x, pos, seq == 0)
    assert torch.equal(now, before)


# ------------------------------------------------------------------------------------- generate_lmdb.py
CSV_CASES = {
    "latin1": (b"item_id,user_id,timestamp\ni1,u1,1\ncaf\xe9,u1,2\n",
               r"not UTF-8 text \(byte 0xe9 at offset 37, line 3\)"),
    "empty": (b"", "the file is empty"),
    "no_item_id": (b"item,user_id,timestamp\ni1,u1,1\n", "expected an item_id column"),
    "header_only": (b"item_id,user_id,timestamp\n", "no rows after the header"),
}


def test_generate_lmdb_reads_item_ids_as_training_does(tmp_path):
    """NA, null and nan are item ids to training (REC.data.interactions); packing must store covers under them."""
    from REC.data import load_interactions
    from REC.data.cover_pack import read_item_tokens

    (tmp_path / "Na.csv").write_text("item_id,user_id,timestamp\nNA,u1,1\nnull,u1,2\nnan,u2,3\nNA,u2,4\n")
    assert read_item_tokens(tmp_path / "Na.csv") == load_interactions(str(tmp_path), "Na").item_tokens.to_list()[1:]


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_generate_lmdb_exits_2_on_an_unreadable_csv_before_writing(tmp_path, case, capsys):
    content, message = CSV_CASES[case]
    csv = tmp_path / "Bad.csv"
    csv.write_bytes(content)
    (tmp_path / "cover").mkdir()
    status, _, err = call_main(generate_lmdb.main, [f"--data_path={tmp_path}", "--dataset=Bad", "--size=8",
                                                    "--workers=1"], capsys)
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"generate_lmdb.py: error: {csv}: "), err
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "covers.lmdb").exists()  # nothing written


def test_main_refuses_a_catalogue_without_negatives_before_any_run_directory(tmp_path, capsys):
    """Four items, and one user's training part holds all four: no negative exists for that user's chunk. The
    launcher finds it while checking the data, not every process at its first batch."""
    rows = ["item_id,user_id,timestamp"] + [f"{i},u1,{t}" for t, i in enumerate("abcdab")] + \
           [f"{i},u2,{t}" for t, i in enumerate("abc")]
    (tmp_path / "Tiny.csv").write_text("\n".join(rows) + "\n")
    status, _, err = call_main(launch_main, ["--config_file", "IDNet/sasrec.yaml", f"--data_path={tmp_path}",
                                             "--dataset=Tiny", f"--output_dir={tmp_path / 'runs'}", "--topk=[1,2]",
                                             "--valid_metric=NDCG@2"], capsys)
    assert status == 2, err
    assert "hold every item a negative may be" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()
