"""The adaptation ladder's store-based rungs (``adaptation: frozen | side``, REC/model/encoders/item_encoder.py):
what trains, that a training step from the store runs no encoder, that the stored states are the encoder's own
(fp32, computed in training mode), that each trains and ranks, and that an encoder a rung cannot take is refused.

Real encoders with random weights on the 12-item log of tests/test_encoder_cache.py: CLIP ViT-B/32 (224 px) and
timm's ResNet-50 (32 px covers, its BatchNorm frozen in evaluation mode)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from REC.config import ConfigError
from REC.data.cover_batches import ItemCoverBatches
from REC.data.covers import CoverStore
from REC.app.prefix_store import attach_prefix_store
from REC.evaluator import FullRankingEvaluator
from REC.model import create_model
from REC.app.configure import build_config

from .conftest import run_main, train_steps
from .test_encoder_cache import CPU, SMALL, log, tiny  # noqa: F401

ENCODERS = {"clip_vit_b32": ("overall/ViT.yaml", []), "resnet50": ("overall/ResNet50.yaml", ["--image_size=32"])}


def config_for(data, store_dir, encoder, rung, *extra):
    overall, more = ENCODERS[encoder]
    return build_config(["PixelNet/sasrec.yaml", overall],
                        [f"--data_path={data}", "--dataset=Tiny", "--encoder_pretrained=false", *SMALL, *more,
                         f"--adaptation={rung}", "--side_width=16", "--train_batch_size=4", "--cover_batch_size=16",
                         "--num_workers=0", "--show_progress=false", f"--encoder_cache_dir={store_dir}", *extra])


def expected_trainable(encoder_module, rung, d=32, side=16) -> int:
    """The head (and the side network) by hand: nothing of the backbone trains."""
    width = encoder_module.backbone.width
    if rung == "frozen":
        return width * d + d
    widths = encoder_module.stages.widths
    per_block = side * side * 2 + side * 2 + 2 * side  # the MLP's two Linears, the block's LayerNorm
    return sum(w * side + side for w in widths) + len(widths) * per_block + len(widths) + 2 * side + side * d + d


@pytest.mark.parametrize("rung", ["frozen", "side"])
@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_a_store_rung_trains_its_small_part_from_stored_states_and_ranks(log, tmp_path, encoder, rung):
    """With the many-negative loss (cosine: random encoders give item vectors so large that the paper's BPR loss
    is saturated at 0 from the first step)."""
    cfg = config_for(log.data, tmp_path, encoder, rung, "--loss=sampled_softmax", "--similarity=cosine",
                     "--num_negatives=4", "--temperature=0.1")
    torch.manual_seed(0)
    model = create_model("MOSASRec", cfg, log.info)
    items = model.cover_items_module
    enc = items.visual_encoder
    assert enc.adaptation == rung and not any(p.requires_grad for p in enc.backbone.parameters())
    assert enc.trainable_parameters() == expected_trainable(enc, rung)
    covers = CoverStore(log.data / "covers.lmdb", log.inter.item_tokens)
    store = attach_prefix_store(cfg, model, log.inter, log.split, CPU, covers)
    assert store is not None and store.complete
    ids = np.arange(1, log.split.item_num)
    model.train()  # the states are the encoder's in training mode too: it stays in evaluation mode
    direct = items.prefix_of_covers(torch.from_numpy(covers.get(ids)))
    torch.testing.assert_close(store.rows(ids), direct, rtol=1e-5, atol=1e-5)
    width = enc.backbone.width if rung == "frozen" else sum(enc.stages.widths)
    assert store.shape == (width,)

    calls = []
    hook = enc.backbone.net.register_forward_hook(lambda *a: calls.append(1))
    try:
        from REC.app.train import training_batches
        batches = training_batches(model, log.split, cfg, covers)
        batches.prefix = store
        batch = batches[0]
        assert "covers" not in batch and batch["cover_prefix"].shape[1:] == (width,)
        losses = train_steps(model, batch, steps=4, lr=1e-2)
        assert calls == []  # no encoder forward (and so no backward) in a training step
        assert losses[-1] < losses[0], losses
        model.eval()
        evaluator = FullRankingEvaluator(["Recall"], [5], 7, CPU, item_covers=ItemCoverBatches(
            covers, log.split.item_num, 8, prefix=store))
        with torch.no_grad():
            table = evaluator.encode_all_covers(model)
        assert calls == [] and table.shape == (log.split.item_num, 32) and torch.isfinite(table).all()
        assert not torch.allclose(table[1], table[2])
    finally:
        hook.remove()


def test_side_refuses_an_encoder_it_cannot_cut(log, tmp_path):
    cfg = build_config(["PixelNet/sasrec.yaml", "overall/ResNet50.yaml"],
                       [f"--data_path={log.data}", "--dataset=Tiny", "--encoder_pretrained=false",
                        "--encoder=timm/test_resnet", "--adaptation=side", *SMALL])
    with pytest.raises(ConfigError, match=r"key 'adaptation' = 'side': encoder timm/test_resnet cannot be cut .* "
                                          r"side supports clip_vit_b32, .*resnet50"):
        create_model("MOSASRec", cfg, log.info)


@pytest.mark.slow
def test_side_trains_under_ddp_then_evaluate_predict_and_init_from_read_it(log, tmp_path):
    """main.py with adaptation side under DDP (2 gloo processes; the store built sharded across them, ResNet-50
    with its BatchNorm in evaluation mode), then REC.app.evaluate on its best.pth in 1 process: the same test metrics,
    the store reused; predict; and a frozen-rung run initialised from it (init_from): the recommender and the
    head's shapes match and load, the side network has no place in the frozen rung and is reported so."""
    import json
    import subprocess
    import sys

    from REC.utils.run_layout import TRANSFER_REPORT_FILE
    from .conftest import ROOT
    args = ["--config_file", "PixelNet/sasrec.yaml", "overall/ResNet50.yaml", f"--data_path={log.data}",
            "--dataset=Tiny", "--encoder_pretrained=false", "--image_size=32", "--side_width=16",
            *SMALL, "--epochs=2", "--num_workers=0", "--show_progress=false", f"--encoder_cache_dir={tmp_path / 's'}"]
    run = run_main(["--device", "cpu:2", *args, "--adaptation=side", f"--output_dir={tmp_path / 'side'}"])
    said = run.proc.stdout + run.proc.stderr
    assert "adaptation side: the encoder is frozen, the pooled state of each of its 16 blocks" in said
    assert "encoder_cache: building" in said
    result = run.result
    import yaml
    per_process = yaml.safe_load((run.run_dir / "config.yaml").read_text())["train_batch_size"]
    assert result["global_batch_size"] == 2 * per_process  # two processes trained
    ev = subprocess.run([sys.executable, "-m", "REC", "evaluate", str(run.run_dir)], cwd=ROOT, capture_output=True,
                        text=True)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert "encoder_cache: reusing" in ev.stdout + ev.stderr
    got = json.loads(ev.stdout[ev.stdout.index("{"):])
    assert got["test"]["ndcg@10"] == pytest.approx(result["test"]["ndcg@10"], abs=1e-6)
    out = tmp_path / "recs.csv"  # predict encodes every cover itself (no store): the same rung, the same model
    pr = subprocess.run([sys.executable, "-m", "REC", "predict", str(run.run_dir), "--output", str(out), "--topk", "3"],
                        cwd=ROOT, capture_output=True, text=True)
    assert pr.returncode == 0, pr.stderr[-2000:]
    import pandas as pd
    recs = pd.read_csv(out)
    assert len(recs) == 3 * (log.inter.user_num - 1) and recs["rank"].max() == 3

    frozen = run_main([*args, "--adaptation=frozen", "--epochs=1", f"--init_from={run.run_dir}",
                       "--encoder_head_layers=[]", f"--output_dir={tmp_path / 'frozen'}"])
    report = json.loads((frozen.run_dir / TRANSFER_REPORT_FILE).read_text())
    loaded = {e["name"] for e in report["loaded"]}
    skipped = {e["name"]: e["why"] for e in report["skipped"]}
    assert any(n.startswith("trm_encoder") or "position_embedding" in n for n in loaded), sorted(loaded)
    assert skipped and all(w in ("absent_in_target", "shape_mismatch") for n, w in skipped.items()
                           if ".side." in n), skipped
    assert any(".side." in n for n in skipped)
    assert frozen.result["epochs_run"] == 1


# ------------------------------------------------------------------------------------------------ lora
def lora_model(log, tmp_path, encoder, *extra):
    """With the many-negative loss (cosine), for the reason of the store rungs' test."""
    cfg = config_for(log.data, tmp_path, encoder, "lora", "--lora_rank=4", "--loss=sampled_softmax",
                     "--similarity=cosine", "--num_negatives=4", "--temperature=0.1", *extra)
    torch.manual_seed(0)
    return cfg, create_model("MOSASRec", cfg, log.info)


@torch.no_grad()
def live_branches(enc) -> None:
    """timm zero-initialises each ResNet block's last BatchNorm scale (random weights only), so the branch, and
    its adapters' gradient, would be zero; pretrained weights are not. A no-op for the ViT."""
    for name, m in enc.backbone.net.named_modules():
        if name.endswith("bn3"):
            m.weight.fill_(1.0)


@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_lora_counts_merges_to_the_same_scores_and_trains_from_the_blocks_store(log, tmp_path, encoder):
    from REC.model.encoders.lora import LowRankDelta, merge_adapters
    extra = ["--encoder_trainable_blocks=2"]
    cfg, model = lora_model(log, tmp_path, encoder, *extra)
    items = model.cover_items_module
    enc = items.visual_encoder
    live_branches(enc)
    deltas = [m for m in enc.modules() if isinstance(m, LowRankDelta)]
    # rank r on a weight [out, in(, k, k)] trains r * (in * k * k + out) numbers; plus the head (width x d + d)
    adapters = sum(4 * (d.A.shape[1] + d.B.shape[0]) for d in deltas)
    assert enc.trainable_parameters() == adapters + enc.backbone.width * 32 + 32
    assert all(not p.requires_grad for n, p in enc.backbone.named_parameters() if not n.endswith((".A", ".B")))
    assert len(deltas) == (8 if encoder == "clip_vit_b32" else 6)  # 4 projections per ViT block, 3 convs per ResNet block
    assert enc.frozen_units == len(enc.stages.units) - 2

    # the store covers the blocks below the first adapted one: the blocks rung's store, shared, and exact
    covers = CoverStore(log.data / "covers.lmdb", log.inter.item_tokens)
    store = attach_prefix_store(config_for(log.data, tmp_path, encoder, "lora", "--lora_rank=4", "--encoder_cache=on",
                                           *extra), model, log.inter, log.split, CPU, covers)
    blocks_cfg = config_for(log.data, tmp_path, encoder, "blocks", *extra)
    torch.manual_seed(0)
    blocks = create_model("MOSASRec", blocks_cfg, log.info)
    live_branches(blocks.cover_items_module.visual_encoder)
    assert items.prefix_description() == blocks.cover_items_module.prefix_description()  # same rows, one store
    ids = np.arange(1, log.split.item_num)
    model.eval()
    torch.testing.assert_close(store.rows(ids), items.prefix_of_covers(torch.from_numpy(covers.get(ids))),
                               rtol=1e-5, atol=1e-5)

    from REC.app.train import training_batches
    batches = training_batches(model, log.split, cfg, covers)
    batches.prefix = store
    model.train()
    # the frozen base (its BatchNorm statistics included) runs in evaluation mode; the head trains
    assert not any(m.training for m in enc.backbone.modules()) and enc.head.training
    losses = train_steps(model, batches[0], steps=6, lr=2e-3)
    assert losses[-1] < losses[0], losses
    assert any(d.B.abs().sum() > 0 for d in deltas)  # the adapters moved (B starts at zero)

    model.eval()
    some = torch.from_numpy(covers.get(ids[:5]))
    with torch.no_grad():
        adapted = items.encode(some)
        for d in deltas:
            d.B.zero_()
        base = items.encode(some)
    assert not torch.allclose(adapted, base, atol=1e-6)  # the adapters change the vectors...
    losses = train_steps(model, batches[0], steps=2, lr=1e-2)  # ...and train again from B = 0
    with torch.no_grad():
        unmerged = items.encode(some)
        assert merge_adapters(model) == len(deltas)
        merged = items.encode(some)
    assert not any(isinstance(m, LowRankDelta) for m in model.modules())
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)  # merged: the same scores


def test_lora_refuses_what_it_cannot_adapt(log, tmp_path):
    cfg = config_for(log.data, tmp_path, "resnet50", "lora", "--lora_targets=attention")
    with pytest.raises(ConfigError, match=r"lora_targets' = 'attention': the last .* blocks of resnet50 hold no"):
        create_model("MOSASRec", cfg, log.info)
    cfg = build_config(["PixelNet/sasrec.yaml", "overall/ResNet50.yaml"],
                       [f"--data_path={log.data}", "--dataset=Tiny", "--encoder_pretrained=false",
                        "--encoder=timm/test_resnet", "--adaptation=lora", *SMALL])
    with pytest.raises(ConfigError, match=r"adaptation' = 'lora': encoder timm/test_resnet has no block layout"):
        create_model("MOSASRec", cfg, log.info)
