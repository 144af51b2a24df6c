"""PixelNet: items encoded from their covers (real LMDB, real timm encoder, real DDP processes)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from REC.data import EvalBatches, build_train_batches, leave_one_out, load_interactions
from REC.data.cover_batches import BatchesWithCovers, ItemCoverBatches
from REC.data.cover_pack import pack_covers
from REC.data.covers import CoverStore
from REC.data.synthetic import group_covers, visual_log, write_covers, write_csv
from REC.evaluator import FullRankingEvaluator
from REC.model import create_model, list_models
from REC.model.base import DatasetInfo
from REC.app.configure import build_config
from REC.trainer.optim import build_optimizer

from REC.app.launch import main as launch_main

from .conftest import ROOT, call_main, run_main, train_steps
from .model_cases import SMALL

PIXEL_MODELS = list_models(family="PixelNet")
YAML = {name: f"PixelNet/{name.lower().removeprefix('mo')}.yaml" for name in PIXEL_MODELS}
COVER = 24  # px: tiny covers and a tiny encoder keep every test on the CPU in seconds
TINY_ENCODER = ["--encoder=timm/test_efficientnet", "--encoder_pretrained=false", f"--image_size={COVER}",
                "--encoder_readout=pool", "--encoder_trainable_blocks=-1",
                "--show_progress=false", "--num_workers=0"]


@pytest.fixture(scope="session")
def vis_data(tmp_path_factory):
    """240 users who prefer one of 4 visual groups; 24 cold items occur only as test targets."""
    folder = tmp_path_factory.mktemp("visdata")
    frame, groups = visual_log(n_users=240, n_items=80, n_groups=4, n_cold=24, min_len=5, max_len=14,
                               p_group=0.9, seed=5)
    write_csv(frame, folder / "Vis.csv")
    write_covers(group_covers(groups, size=COVER, seed=5), folder / "cover")
    report = pack_covers(folder / "Vis.csv", folder / "cover", folder / "covers.lmdb", size=COVER, workers=1)
    assert report.ok
    return folder


def model_config(name, data, *extra):
    return build_config([YAML[name], "overall/ViT.yaml"],
                        [f"--data_path={data}", "--dataset=Vis", *TINY_ENCODER, *SMALL[name], *extra])


def build(name, data, *extra):
    cfg = model_config(name, data, *extra)
    inter = load_interactions(str(data), "Vis")
    split = leave_one_out(inter)
    torch.manual_seed(0)
    model = create_model(name, cfg, DatasetInfo.from_split(split))
    store = CoverStore(data / "covers.lmdb", inter.item_tokens)
    return cfg, split, model, store


def test_every_pixelnet_model_has_a_yaml():
    assert sorted(PIXEL_MODELS) == sorted(["DVBPR", "MOBERT4Rec", "MODSSM", "MOFM", "MOGRU4Rec", "MOLightSANs",
                                           "MOMF", "MONextItNet", "MOSASRec", "MOSRGNN"])
    for name in PIXEL_MODELS:
        assert (ROOT / YAML[name]).is_file()


def test_cover_items_lookup_equals_encoding_each_id(vis_data):
    """Batch mode: distinct covers encoded once, every id looked up; id 0 is zero; the mask row is the encoder's
    output for the all-ones image."""
    cfg, split, model, store = build("MOBERT4Rec", vis_data)
    model.eval()
    items = model.item_embedding
    ids = torch.tensor([[0, 5, 3, 5], [7, 0, split.item_num, 3]])
    distinct = torch.tensor([3, 5, 7])
    with torch.no_grad():
        with items.batch_source(distinct, {"covers": torch.from_numpy(store.get(distinct.numpy()))}):
            got = items(ids)
        one = {i: items.encode(torch.from_numpy(store.get(np.array([i]))))[0] for i in (3, 5, 7)}
        mask = items.visual_encoder(items.mask_image("cpu"))[0]
    want = torch.stack([torch.stack([torch.zeros(32), one[5], one[3], one[5]]),
                        torch.stack([one[7], torch.zeros(32), mask, one[3]])])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", PIXEL_MODELS)
def test_pixel_model_trains_and_scores_all_items(name, vis_data):
    # DVBPR's CNN-F needs ~224 px covers (its stride-4 width): a 4-pair batch keeps it to a few covers per step
    cfg, split, model, store = build(name, vis_data, f"--train_batch_size={4 if name == 'DVBPR' else 16}")
    batches = BatchesWithCovers(build_train_batches(model.input_type, split, cfg), store, split.item_num)
    batch = batches[0]
    assert batch["covers"].dtype == torch.uint8 and batch["covers"].shape[1:] == (3, COVER, COVER)
    assert torch.equal(batch["cover_ids"], batch["cover_ids"].unique())  # distinct and ascending
    lr = 3e-4 if name == "DVBPR" else 3e-3  # a CNN-F from scratch with a 22528-wide layer diverges at 3e-3
    losses = train_steps(model, batch, steps=12, lr=lr)
    assert min(losses[-3:]) < 0.8 * losses[0], losses
    encoder_grads = [p.grad for n, p in model.named_parameters() if "visual_encoder" in n and p.requires_grad]
    assert encoder_grads and all(g is not None for g in encoder_grads)  # trained end to end

    evaluator = FullRankingEvaluator(["Recall", "NDCG"], [10], 7, torch.device("cpu"),
                                     item_covers=ItemCoverBatches(store, split.item_num, 37))
    model.eval()
    with torch.no_grad():
        table = evaluator.encode_all_covers(model)
        assert table.shape == (split.item_num, model.cover_width) and not table[0].any()
        direct = model.encode_covers(torch.from_numpy(store.get(np.arange(1, split.item_num))))
        torch.testing.assert_close(table[1:], direct, rtol=1e-4, atol=1e-5)
        with model.cover_table(table):
            users = model.user_representations(next(iter(EvalBatches(split.test, cfg["MAX_ITEM_LIST_LENGTH"], 16))))
            items = model.item_representations()
        scores = model.score(users, items)
        assert scores.shape == (16, split.item_num) and torch.isfinite(scores).all()
        one_by_one = torch.cat([model.score(users, items[i:i + 1]) for i in range(split.item_num)], 1)
    torch.testing.assert_close(scores, one_by_one, rtol=1e-5, atol=1e-5)


def test_encoder_parameters_form_the_modal_group(vis_data):
    cfg, _, model, _ = build("MOSASRec", vis_data, "--optim_args.modal_lr=0.5", "--optim_args.rec_lr=0.25")
    groups = {g["name"]: g for g in build_optimizer(model, cfg).param_groups}
    encoder = {id(p) for p in model.item_embedding.visual_encoder.parameters() if p.requires_grad}
    assert {id(p) for p in groups["modal"]["params"]} == encoder and groups["modal"]["lr"] == 0.5
    assert not encoder & {id(p) for p in groups["rec"]["params"]} and groups["rec"]["lr"] == 0.25


def test_overall_file_sets_only_the_encoder_learning_rate(vis_data):
    """overall/<encoder>.yaml changes optim_args.modal_* and keeps the model file's rec_* (dotted keys)."""
    cfg = build_config(["PixelNet/nextitnet.yaml", "overall/RN50.yaml"])
    assert dict(cfg["optim_args"]) == {"modal_lr": 1e-4, "modal_decay": 0.01, "rec_lr": 1e-4, "rec_decay": 0.01}
    cfg = build_config(["PixelNet/sasrec.yaml", "overall/ViT.yaml"])
    assert dict(cfg["optim_args"]) == {"modal_lr": 1e-4, "modal_decay": 0.0, "rec_lr": 1e-4, "rec_decay": 0.1}


def test_missing_covers_fail_before_training(vis_data, tmp_path, capsys):
    (tmp_path / "Vis.csv").write_text((vis_data / "Vis.csv").read_text() + "i_new,u_new,1\ni_new,u_new,2\n")
    status, _, err = call_main(launch_main, ["--config_file", YAML["MOSASRec"], "overall/ViT.yaml",
                                             f"--data_path={tmp_path}", "--dataset=Vis",
                                             f"--cover_lmdb={vis_data / 'covers.lmdb'}", f"--output_dir={tmp_path}",
                                             *TINY_ENCODER, *SMALL["MOSASRec"]], capsys)
    assert status == 2
    assert "has no cover for 1 of the" in err and "i_new" in err and "cover_lmdb" in err


@pytest.mark.slow
def test_ddp_training_and_evaluation_match_one_process(vis_data, tmp_path):
    """MOSASRec trains under 2 gloo processes from a frozen-prefix store that the 2 ranks build in shards
    (ResNet-50 with its last 2 blocks trainable; encoder_cache: on, since BatchNorm in its frozen part keeps auto
    off); re-evaluating its checkpoint on 1 process reuses the store and gives the same metrics (the cover table
    is encoded in two shards and gathered)."""
    run = run_main(["--device", "cpu:2", "--config_file", YAML["MOSASRec"], "overall/ViT.yaml",
                    f"--data_path={vis_data}", "--dataset=Vis", f"--output_dir={tmp_path}", "--epochs=1",
                    "--train_batch_size=16", *TINY_ENCODER, *SMALL["MOSASRec"], "--encoder=resnet50",
                    "--encoder_trainable_blocks=2", "--encoder_cache=on", f"--encoder_cache_dir={tmp_path / 'store'}",
                    "--cover_batch_size=16"])
    said = run.proc.stdout + run.proc.stderr
    assert "7 of 7 chunks of 16 items to encode (4 on this rank)" in said, said[-3000:]  # 104 items, rank 0's share
    assert len(list((tmp_path / "store").glob("prefix-Vis-*.npy"))) == 1
    result = run.result
    assert result["world_size"] == 2 and result["epochs_run"] == 1 and result["cover_encode_seconds"] > 0
    one = subprocess.run([sys.executable, "-m", "REC", "evaluate", str(run.run_dir), "--device", "cpu"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    assert "encoder_cache: reusing" in one.stdout + one.stderr
    evaluated = json.loads(one.stdout[one.stdout.index("{\n"):])
    for key, value in result["test"].items():
        assert evaluated["test"][key] == pytest.approx(value, abs=2e-7), (key, evaluated, result["test"])


@pytest.mark.slow
def test_pixelnet_ranks_never_trained_items_where_idnet_cannot(tmp_path):
    """Every user's test item is a cold item (never in training): PixelNet reads its group from the cover."""
    frame, groups = visual_log(n_users=240, n_items=120, n_groups=8, n_cold=24, min_len=5, max_len=14, p_group=0.9,
                               cold_fraction=1.0, seed=6)
    write_csv(frame, tmp_path / "Vis.csv")
    write_covers(group_covers(groups, size=COVER, seed=6), tmp_path / "cover")
    assert pack_covers(tmp_path / "Vis.csv", tmp_path / "cover", tmp_path / "covers.lmdb", size=COVER, workers=1).ok
    common = [f"--data_path={tmp_path}", "--dataset=Vis", "--show_progress=false", "--epochs=8",
              "--train_batch_size=32", "--optim_args.modal_lr=3e-3", "--optim_args.rec_lr=3e-3"]
    pixel = run_main(["--config_file", YAML["MOSASRec"], "overall/ViT.yaml", f"--output_dir={tmp_path}",
                      *TINY_ENCODER, *SMALL["MOSASRec"], *common]).result["test"]
    ids = run_main(["--config_file", "IDNet/sasrec.yaml", "overall/ID.yaml", f"--output_dir={tmp_path}",
                    *SMALL["SASRec"], "--optim_args={learning_rate: 3.0e-3, weight_decay: 0.1}",
                    *common[:4]]).result["test"]
    chance = 10 / (120 + 24)
    assert pixel["recall@10"] > 3 * chance and ids["recall@10"] < chance, (pixel, ids)
