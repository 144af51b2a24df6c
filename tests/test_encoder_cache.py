"""The frozen-prefix store (``encoder_cache``): training and evaluation from stored rows equal the uncached ones,
the store resumes a killed build, its key follows what its rows depend on, ``auto`` leaves out the encoders it
would change, and a disk too small is refused before anything is written.

The real CLIP ViT-B/32 (random weights: nothing downloads) runs on a 12-item log with 32 px covers, resized to
its 224 px on the fly. It is built three times in the file (the shared MOSASRec, whose store every test reuses;
MOBERT4Rec; one rebuild for the key), besides the two main.py runs; the rest are meta-device builds."""
from __future__ import annotations

import logging
import shutil
from collections import namedtuple
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from REC.config import ConfigError
from REC.data import build_train_batches, leave_one_out, load_interactions
from REC.data.cover_batches import BatchesWithCovers, ItemCoverBatches
from REC.data.cover_pack import pack_covers
from REC.data.covers import CoverStore
from REC.data.item_array import human_bytes, read_json
from REC.data.prefix_cache import PrefixCache, PrefixCacheError, cache_key
from REC.data.synthetic import group_covers, visual_log, write_covers, write_csv
from REC.app.prefix_store import attach_prefix_store, describe_store, fill_store, log_plan, prefix_plan, store_dtype
from REC.evaluator import FullRankingEvaluator
from REC.app.launch import main as launch_main
from REC.model import create_model
from REC.model.base import DatasetInfo
from REC.model.encoders import ItemEncoder
from REC.model.encoders.backbone import set_trainable_blocks
from REC.model.pixel import CoverItems
from REC.app.configure import build_config

from .conftest import call_main, run_main, train_steps
from .test_encoders import meta

COVER = 32
CPU = torch.device("cpu")
SMALL = ["--embedding_size=32", "--n_heads=2", "--n_layers=1"]
PREFIX_SHAPE = (50, 768)  # ViT-B/32 at 224 px: 49 patches + the class token, width 768


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """12 users, 12 items in 3 visual groups, 32 px covers."""
    folder = tmp_path_factory.mktemp("tinyvit")
    frame, groups = visual_log(n_users=12, n_items=12, n_groups=3, min_len=4, max_len=6, seed=1)
    write_csv(frame, folder / "Tiny.csv")
    write_covers(group_covers(groups, size=COVER, seed=1), folder / "cover")
    assert pack_covers(folder / "Tiny.csv", folder / "cover", folder / "covers.lmdb", size=COVER, workers=1).ok
    return folder


def vit_config(data, store_dir, *extra, model="sasrec"):
    """overall/ViT.yaml (clip_vit_b32, the last 2 of 12 blocks train, mean readout) with a small recommender."""
    return build_config([f"PixelNet/{model}.yaml", "overall/ViT.yaml"],
                        [f"--data_path={data}", "--dataset=Tiny", "--encoder_pretrained=false", *SMALL,
                         "--train_batch_size=2", "--cover_batch_size=16", "--num_workers=0", "--show_progress=false",
                         f"--encoder_cache_dir={store_dir}", *extra])


@pytest.fixture(scope="module")
def log(tiny, tmp_path_factory):
    """The tiny log's split, and the folder of the store for the ViT-B/32 setting."""
    inter = load_interactions(str(tiny), "Tiny")
    split = leave_one_out(inter)
    return SimpleNamespace(data=tiny, inter=inter, split=split, info=DatasetInfo.from_split(split),
                           store_dir=tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def vit(log):
    """MOSASRec over the real ViT-B/32 (seed 0), its store (built by ``attach_prefix_store`` with encoder_cache:
    auto) and its trainable weights as built, for tests to restore."""
    tiny, inter, split, info = log.data, log.inter, log.split, log.info
    cfg = vit_config(tiny, log.store_dir)
    torch.manual_seed(0)
    model = create_model("MOSASRec", cfg, info)
    covers = CoverStore(tiny / "covers.lmdb", inter.item_tokens)
    store = attach_prefix_store(cfg, model, inter, split, CPU, covers)
    assert store is not None and store.complete and store.shape == PREFIX_SHAPE
    init = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return SimpleNamespace(data=tiny, cfg=cfg, inter=inter, split=split, info=info, model=model, covers=covers,
                           store=store, items=model.cover_items_module, init=init)


def restore(v) -> None:
    """The fixture model's trainable weights as built, no gradients, training mode."""
    with torch.no_grad():
        for n, p in v.model.named_parameters():
            if p.requires_grad:
                p.copy_(v.init[n])
                p.grad = None
    v.model.train()


def first_batches(v, model, cfg):
    """Batch 0 of the same epoch without and with the store; everything but the covers is the same."""
    batches = build_train_batches(model.input_type, v.split, cfg)
    plain = BatchesWithCovers(batches, v.covers, v.split.item_num)[0]
    cached = BatchesWithCovers(batches, v.covers, v.split.item_num, prefix=v.store)[0]
    assert "covers" not in cached and "cover_prefix" not in plain
    assert cached["cover_prefix"].shape == (len(cached["cover_ids"]), *PREFIX_SHAPE)
    assert cached["cover_prefix"].dtype == torch.float32
    assert plain.keys() - {"covers"} == cached.keys() - {"cover_prefix"}
    for k in plain.keys() - {"covers"}:
        assert torch.equal(plain[k], cached[k]), k
    return plain, cached


# ------------------------------------------------------------------------------------------ exactness in fp32
def test_training_and_the_item_table_from_the_store_equal_encoding_every_cover(vit):
    """MOSASRec on ViT-B/32 (2 trainable blocks, mean readout), fp32: the same losses over 2 steps from the same
    seed, and the same evaluation table of every item, with the store as without it."""
    model = vit.model
    plain, cached = first_batches(vit, model, vit.cfg)

    restore(vit)
    model.eval()
    tables = []
    for prefix in (None, vit.store):
        evaluator = FullRankingEvaluator(["Recall"], [5], 7, CPU, item_covers=ItemCoverBatches(
            vit.covers, vit.split.item_num, 8, prefix=prefix))  # 2 batches
        with torch.no_grad():
            tables.append(evaluator.encode_all_covers(model))
    assert tables[0].shape == (vit.split.item_num, 32) and not tables[0][0].any()
    assert not torch.allclose(tables[0][1], tables[0][2])  # the covers differ, and so do their vectors
    torch.testing.assert_close(tables[1], tables[0], rtol=1e-5, atol=1e-6)

    losses = []
    for batch in (plain, cached):
        restore(vit)
        torch.manual_seed(7)  # SASRec's dropout draws alike
        losses.append(train_steps(model, batch, steps=2, lr=1e-3))
    assert losses[0][-1] != losses[0][0]  # the steps moved the weights
    assert losses[1] == pytest.approx(losses[0], rel=1e-5, abs=1e-7)
    restore(vit)


def test_bert4rec_mask_token_from_the_store_gives_the_same_loss(vit):
    """MOBERT4Rec's mask token is the encoder's output for the all-ones image, encoded beside the stored rows."""
    cfg = vit_config(vit.data, vit.store.path.parent, model="bert4rec")
    torch.manual_seed(0)
    model = create_model("MOBERT4Rec", cfg, vit.info)
    assert model.cover_items_module.mask_id == vit.split.item_num
    # the SASRec fixture's encoder and head: the store depends on the encoder, not on the recommender, so it is
    # found complete and reused
    model.cover_items_module.visual_encoder.load_state_dict(vit.items.visual_encoder.state_dict())
    store = attach_prefix_store(cfg, model, vit.inter, vit.split, CPU, vit.covers)
    assert store.path == vit.store.path
    plain, cached = first_batches(SimpleNamespace(**{**vars(vit), "store": store}), model, cfg)
    assert (plain["masked_items"] == vit.split.item_num).any()  # the batch masks some positions
    model.train()
    losses = []
    for batch in (plain, cached):
        torch.manual_seed(3)
        with torch.no_grad():
            losses.append(model(batch).item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


# --------------------------------------------------------------------------------------- gradient checkpointing
def test_grad_checkpointing_recomputes_the_trainable_blocks_for_the_same_gradients(vit):
    assert meta("clip_vit_b32", encoder_grad_checkpointing=True).grad_checkpointing  # the key reaches the encoder
    model, enc = vit.model, vit.items.visual_encoder
    _, cached = first_batches(vit, model, vit.cfg)
    calls = []
    hooks = [u.register_forward_pre_hook(lambda *a: calls.append(1)) for u in enc.stages.units[enc.frozen_units:]]
    runs = []
    try:
        for recompute in (False, True):
            restore(vit)
            enc.grad_checkpointing = recompute
            calls.clear()
            torch.manual_seed(5)
            loss = model(cached)
            loss.backward()
            grads = {n: p.grad.clone() for n, p in enc.named_parameters() if p.requires_grad}
            runs.append((loss.item(), grads, len(calls)))
    finally:
        enc.grad_checkpointing = False
        for h in hooks:
            h.remove()
        restore(vit)
    (loss0, grads0, calls0), (loss1, grads1, calls1) = runs
    assert calls0 == 2 and calls1 == 4  # 2 trainable blocks, each run again in the backward pass
    assert loss1 == loss0
    assert grads0.keys() == grads1.keys() and any("resblocks.10" in n for n in grads0)
    for n in grads0:
        assert grads0[n].abs().sum() > 0, n
        torch.testing.assert_close(grads1[n], grads0[n], rtol=1e-5, atol=1e-8)


# ------------------------------------------------------------------------------------------- a killed build
class CountingCovers:
    """The real covers, counting what is read; ``fail_at``: the call (1-based) that raises, as a killed build."""

    def __init__(self, covers, fail_at=None):
        self.covers, self.fail_at, self.calls = covers, fail_at, []

    def get(self, ids):
        self.calls.append([int(i) for i in ids])
        if len(self.calls) == self.fail_at:
            raise RuntimeError("killed")
        return self.covers.get(ids)


def test_a_killed_build_resumes_with_the_missing_chunks_only(vit, tmp_path):
    items = vit.items
    store = PrefixCache(tmp_path, "Tiny", {"test": "resume"}, 5, PREFIX_SHAPE, "float32", chunk=2)  # items 1..4
    assert store.n_chunks == 2
    killed = CountingCovers(vit.covers, fail_at=2)
    with pytest.raises(RuntimeError, match="killed"):
        fill_store(store, items, killed, CPU, "fp32", False, 0)
    assert not store.complete and store.pending() == [1]
    assert not store.meta_path.exists() and read_json(store.part_meta_path)["complete"] is False

    again = CountingCovers(vit.covers)
    fill_store(store, items, again, CPU, "fp32", False, 0)
    assert again.calls == [[3, 4]]  # chunk 0 (items 1, 2) is not encoded again
    assert store.complete and store.pending() == []
    rows = store.rows(np.arange(5))
    assert rows.shape == (5, *PREFIX_SHAPE) and not rows[0].any()
    direct = items.prefix_of_covers(torch.from_numpy(vit.covers.get(np.arange(1, 5))))
    torch.testing.assert_close(rows[1:], direct, rtol=1e-5, atol=1e-5)  # batches of 2 vs of 4: float noise

    done = CountingCovers(vit.covers)
    fill_store(store, items, done, CPU, "fp32", False, 0)  # complete: reused, nothing read
    assert done.calls == []


# ------------------------------------------------------------------------------------------------ the key
@pytest.mark.slow
def test_the_key_follows_the_frozen_weights_cover_size_dtype_and_cut(vit, tmp_path):
    def key(cfg, items):
        return cache_key(describe_store(cfg, items, vit.inter))

    base = key(vit.cfg, vit.items)
    assert base == vit.store.key
    torch.manual_seed(0)
    items = create_model("MOSASRec", vit.cfg, vit.info).cover_items_module  # the same settings and seed
    enc = items.visual_encoder
    assert key(vit.cfg, items) == base
    with torch.no_grad():  # training moves the trainable blocks: the store stays valid (resume, init_from)
        next(enc.stages.units[-1].parameters()).add_(0.1)
        next(enc.head.parameters()).add_(0.1)
    assert key(vit.cfg, items) == base

    bf16 = vit_config(vit.data, tmp_path, "--precision=bf16")
    assert key(bf16, vit.items) != base
    bigger = vit_config(vit.data, tmp_path, "--image_size=256")
    assert key(bigger, CoverItems(bigger, 32, encoder=vit.items.visual_encoder)) != base

    set_trainable_blocks(enc.backbone, 3, enc.name)  # the cut one block earlier, same weights
    cut = ItemEncoder(enc.name, enc.backbone, enc.head, enc.readout, False)
    assert cut.frozen_units == 9
    assert key(vit.cfg, CoverItems(vit.cfg, 32, encoder=cut)) != base

    with torch.no_grad():  # another frozen weight, as from another seed or another weights file
        next(enc.stages.units[0].parameters()).add_(1e-3)
    assert key(vit.cfg, items) != base

    # a bf16 run stores bfloat16 rows (half the bytes; numpy holds their bits as uint16)
    assert store_dtype(bf16) == "bfloat16" and store_dtype(vit.cfg) == "float32"
    store = PrefixCache(tmp_path, "Tiny", describe_store(bf16, vit.items, vit.inter), 3, PREFIX_SHAPE, "bfloat16", 2)
    assert store.create() == "new" and 2 * store.row_bytes == vit.store.row_bytes
    want = vit.store.rows(np.arange(3))
    store.write(0, want[1:])
    store.finish()
    rows = store.rows(np.arange(3))
    assert rows.dtype == torch.bfloat16 and np.load(store.path, mmap_mode="r").dtype == np.uint16
    assert not rows[0].any() and torch.equal(rows[1:], want[1:].to(torch.bfloat16))


# --------------------------------------------------------------------------------------------- auto, on, off
def meta_model(v, *extra, model="MOSASRec"):
    cfg = vit_config(v.data, v.store_dir, *extra)
    with torch.device("meta"):
        return cfg, create_model(model, cfg, v.info)


@pytest.mark.parametrize("encoder,why", [("clip_rn50", "BatchNorm2d (batch statistics)"),
                                         ("swin_t", "DropPath (stochastic depth)")])
def test_auto_leaves_out_a_frozen_part_that_training_mode_changes(log, encoder, why, caplog):
    cfg, model = meta_model(log, f"--encoder={encoder}", "--encoder_readout=null", "--encoder_trainable_blocks=null")
    plan = prefix_plan(cfg, model)
    assert not plan.use and why in plan.reason and "encoder_cache: on" in plan.reason
    on = model.cover_items_module.prefix_plan("on")
    assert on.use and on.frozen_units == plan.frozen_units > 0 and any(why in c for c in on.changes)
    cfg, model = meta_model(log, f"--encoder={encoder}", "--encoder_readout=null", "--encoder_trainable_blocks=null",
                            "--encoder_cache=on")
    with caplog.at_level(logging.INFO, logger="REC.app.prefix_store"):
        assert log_plan(cfg, model, log.split).use
    assert f"encoder_cache: on, although {why}" in caplog.text and "is stored once per item" in caplog.text


@pytest.mark.parametrize("extra", [["--encoder_trainable_blocks=-1"],
                                   ["--encoder=timm/test_efficientnet", "--encoder_readout=pool",
                                    "--encoder_trainable_blocks=-1", f"--image_size={COVER}"]])
def test_an_encoder_that_trains_whole_has_nothing_to_store(log, extra):
    cfg, model = meta_model(log, *extra)
    for setting in ("auto", "on"):
        plan = model.cover_items_module.prefix_plan(setting)
        assert not plan.use and plan.frozen_units is None and "no frozen front" in plan.reason, setting
    assert not prefix_plan(cfg, model).use


def test_plans_of_the_vit_setting_and_of_an_id_model(log):
    cfg, model = meta_model(log)
    plan = prefix_plan(cfg, model)
    assert plan.use and plan.frozen_units == 10 and plan.changes == ()
    assert not model.cover_items_module.prefix_plan("off").use
    with torch.device("meta"):
        ids = create_model("SASRec", build_config(["IDNet/sasrec.yaml", "overall/ID.yaml"], SMALL), log.info)
    assert prefix_plan(cfg, ids) is None


# ------------------------------------------------------------------------------------------- no room on disk
Usage = namedtuple("Usage", "total used free")


def test_no_room_is_refused_before_anything_is_written(log, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 ** 12, 10 ** 12 - 1000, 1000))
    folder = tmp_path / "small" / "disk"
    store = PrefixCache(folder, "Tiny", {"test": "room"}, log.split.item_num, PREFIX_SHAPE, "float32", 4)
    with pytest.raises(PrefixCacheError) as err:
        store.create()
    assert "encoder_cache_dir" in str(err.value) and human_bytes(store.nbytes) in str(err.value)
    assert str(folder) in str(err.value) and f"{human_bytes(1000)} free" in str(err.value)
    assert not [f for f in folder.iterdir() if f.suffix != ".lock"]  # no rows, done marks or description

    status, _, err = call_main(launch_main, [
        "--config_file", "PixelNet/sasrec.yaml", "overall/ViT.yaml", f"--data_path={log.data}", "--dataset=Tiny",
        f"--output_dir={tmp_path / 'runs'}", f"--encoder_cache_dir={folder}", "--encoder_pretrained=false",
        "--num_workers=0", "--show_progress=false"], capsys)
    assert status == 2
    need = human_bytes(log.split.item_num * int(np.prod(PREFIX_SHAPE)) * 4)
    assert "encoder_cache_dir" in err and need in err and str(folder) in err, err
    assert not list(tmp_path.rglob("*.npy")) and not (tmp_path / "runs").exists()


def test_sampled_softmax_encodes_its_shared_negatives_with_the_batch_alike_with_and_without_the_store(vit, log):
    """PixelNet with loss: sampled_softmax: the shared negatives are more items of the step's distinct set (their
    covers, or their stored rows), and the two routes train to the same losses in fp32."""
    from REC.model.objectives import build_objective
    from REC.app.train import training_batches
    cfg = vit_config(vit.data, log.store_dir, "--loss=sampled_softmax", "--num_negatives=6", "--temperature=0.5")
    model = vit.model
    counts = np.bincount(vit.split.train_items, minlength=vit.split.item_num)
    model.objective = build_objective(cfg, model, counts)
    try:
        batches = training_batches(model, vit.split, cfg, vit.covers)
        plain = batches[0]
        shared = plain["shared_negatives"]
        assert shared.shape == (6,) and (shared > 0).all()
        own = batches.distinct_items(plain, ("items", "negatives"))
        assert set(shared.tolist()) | set(own.tolist()) == set(plain["cover_ids"].tolist())
        assert len(plain["cover_ids"]) > len(own)  # the draw added covers the batch did not name
        assert plain["covers"].shape[0] == len(plain["cover_ids"])
        line = batches.describe_step("shared_negatives")
        assert (f"{len(plain['cover_ids'])} in the first batch ({len(own)} named by the batch, "
                f"{len(plain['cover_ids']) - len(own)} more from its 6 shared negatives)") in line, line
        batches.prefix = vit.store
        cached = batches[0]
        assert torch.equal(cached["shared_negatives"], shared) and "covers" not in cached
        losses = []
        for batch in (plain, cached):
            restore(vit)
            torch.manual_seed(7)
            losses.append(train_steps(model, batch, steps=3, lr=1e-4))
        assert losses[0][-1] < losses[0][0], losses
        # the store's rows equal the computed ones to fp32 rounding (they were computed in other batches); a loss
        # falling 30x in three steps carries that rounding to ~1e-5 absolute with AVX-512 kernels and 5.3e-5 with
        # AVX2 ones (ATEN_CPU_CAPABILITY=avx2): a wrong row moves it >1e-2
        assert losses[1] == pytest.approx(losses[0], rel=1e-4, abs=2e-4)
        assert model.objective.candidates_per_row > 1
    finally:
        model.objective = None
        restore(vit)


# ------------------------------------------------------------------------------------------------ the config
def test_on_and_off_are_strings_from_the_command_line_and_yaml(tmp_path):
    base = ["PixelNet/sasrec.yaml", "overall/ViT.yaml"]
    assert build_config(base)["encoder_cache"] == "auto"
    assert build_config(base, ["--encoder_cache=on"])["encoder_cache"] == "on"
    assert build_config(base, ["--encoder_cache=off"])["encoder_cache"] == "off"
    off = tmp_path / "off.yaml"
    off.write_text("encoder_cache: off\nencoder_grad_checkpointing: true\n")
    cfg = build_config([*base, str(off)])
    assert cfg["encoder_cache"] == "off" and cfg["encoder_grad_checkpointing"] is True
    maybe = tmp_path / "maybe.yaml"
    maybe.write_text("encoder_cache: maybe\n")
    with pytest.raises(ConfigError, match="encoder_cache") as err:
        build_config([*base, str(maybe)])
    assert "maybe" in str(err.value) and "auto" in str(err.value)


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_a_run_with_the_store_equals_a_run_without(log, tmp_path):
    """The README's main example, PixelNet/sasrec.yaml + overall/ViT.yaml (the real CLIP ViT-B/32, random weights:
    nothing downloads) for one epoch on the tiny log, through main.py: encoder_cache auto stores the frozen
    blocks for it, and its test metrics equal those of its best.pth evaluated without the store (every cover
    through the whole encoder; training equality is the model-level test above)."""
    from REC.app.loaded_run import load_run_config
    from REC.app.train import _build

    run = run_main(["--config_file", "PixelNet/sasrec.yaml", "overall/ViT.yaml", f"--data_path={log.data}",
                    "--dataset=Tiny", "--encoder_pretrained=false", "--epochs=1", "--train_batch_size=4",
                    "--num_workers=0", "--show_progress=false", "--cover_batch_size=16",
                    f"--encoder_cache_dir={tmp_path / 'store'}", f"--output_dir={tmp_path}"])
    said = run.proc.stdout + run.proc.stderr
    n = log.split.item_num - 1
    assert f"is stored once per item: {n} items x 50 x 768 x 4 bytes = " in said, said[-3000:]
    assert "encoder_cache: building" in said and "the last 2 of 12 blocks train" in said
    assert len(list((tmp_path / "store").glob("prefix-Tiny-*.npy"))) == 1
    got, run_dir = run.result, run.run_dir
    # the last 2 of 12 blocks + a 768->512 head (14.57M) and SASRec at d 512 (4.21M): the paper's ~1.9e7
    assert got["trainable_parameters"] == 18_781_184

    config = load_run_config(run_dir)
    _, _, model, evals, evaluator, _ = _build(config, run_dir, CPU, "best.pth")  # no store: whole-encoder path
    assert evaluator.item_covers.prefix is None
    want = evaluator.evaluate(model, evals["test"]).metrics
    assert got["test"].keys() == want.keys()
    for k, value in want.items():
        assert got["test"][k] == pytest.approx(value, abs=1e-6), (k, got["test"], want)
