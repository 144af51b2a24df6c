"""Cross-domain transfer (init_from / init_parts): what loads, what does not and why, and the errors before training.

Source models are built for one dataset size, saved as real checkpoints, and loaded into models built for another
(other item and user counts), as a run pre-trained on dataset A and fine-tuned on dataset B would be.
"""
import json
import re

import numpy as np
import pytest
import torch

from REC.data.synthetic import sequential_log, write_csv
from REC.model import create_model, list_models
from REC.model.base import DatasetInfo
from REC.app.configure import build_config
from REC.trainer.checkpoint import save_atomic
from REC.utils.run_layout import TRANSFER_REPORT_FILE
from REC.trainer.transfer import TransferError, check_init_from, id_tables, initialise_from

from .conftest import run_main, sasrec_args
from .model_cases import SMALL

A, B = (60, 40), (50, 30)  # (item_num, user_num) of the source and the target dataset
SASREC = SMALL["SASRec"]
TINY_ENCODER = ["--encoder=timm/test_resnet", "--encoder_pretrained=false", "--encoder_readout=pool",
                "--encoder_trainable_blocks=-1", "--image_size=24"]
# the test's own oracle of what an ID table is called in the models of this repository (the implementation
# inspects modules and row counts instead; the two must agree for every registered model)
ID_TABLE_NAME = re.compile(r"^((item|user|user_visual)_embedding(\.ids)?\.weight|counts)$")


def dataset(sizes, seed=0):
    items, users = sizes
    rng = np.random.default_rng(seed)
    return DatasetInfo.from_pairs(items, users, rng.integers(1, users, 300), rng.integers(1, items, 300))


def model(name, sizes, *overrides, seed=0):
    cfg = build_config([], [f"--model={name}", *overrides])
    torch.manual_seed(seed)
    return cfg, create_model(name, cfg, dataset(sizes, seed))


def save_source(m, path):
    """A checkpoint as the trainer writes best.pth."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"model": m.state_dict(), "epoch": 3}, path)
    return path


def transfer(name, source_path, *overrides, sizes=B, run_dir=None):
    cfg, target = model(name, sizes, f"--init_from={source_path}", *overrides, seed=1)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    report = initialise_from(target, cfg, run_dir)
    return target, fresh, report


def by_name(entries):
    return {e["name"]: e for e in entries}


def test_sasrec_loads_everything_but_its_item_table(tmp_path):
    _, source = model("SASRec", A, *SASREC)
    save_source(source, tmp_path / "runA" / "best.pth")
    target, fresh, report = transfer("SASRec", tmp_path / "runA", *SASREC, run_dir=tmp_path)

    names = set(target.state_dict())
    assert set(report.loaded_names) == names - {"item_embedding.weight"}
    assert {"position_embedding.weight", "input_norm.weight", "input_norm.bias",
            "encoder.layers.0.attention.query.weight", "encoder.layers.0.feed_forward.norm.weight"} \
        <= set(report.loaded_names)
    skipped = by_name(report.skipped)
    assert list(skipped) == ["item_embedding.weight"]
    assert skipped["item_embedding.weight"]["why"] == "id_table"
    assert skipped["item_embedding.weight"]["source_shape"] == [60, 32]
    assert skipped["item_embedding.weight"]["target_shape"] == [50, 32]
    assert [(e["name"], e["why"]) for e in report.initialised] == [("item_embedding.weight", "id_table")]

    src, got = source.state_dict(), target.state_dict()
    for n in report.loaded_names:
        assert torch.equal(got[n], src[n]), n
    assert torch.equal(got["item_embedding.weight"], fresh["item_embedding.weight"])  # its own fresh init
    assert json.loads((tmp_path / TRANSFER_REPORT_FILE).read_text()) == json.loads(json.dumps(report.to_dict()))


def test_id_tables_do_not_transfer_even_when_the_counts_agree(tmp_path):
    _, source = model("MF", A, "--embedding_size=16", "--mlp_hidden_size=[16]")
    path = save_source(source, tmp_path / "mf.pth")  # a checkpoint file, not a run directory
    _, _, report = transfer("MF", path, "--embedding_size=16", "--mlp_hidden_size=[16]", sizes=A)
    why = {e["name"]: e["why"] for e in report.skipped}
    assert why == {"user_embedding.weight": "id_table", "item_embedding.weight": "id_table"}
    assert report.loaded_names and all("_tower." in n for n in report.loaded_names)
    assert set(report.loaded_names) == set(source.state_dict()) - set(why)


def _build_for_rule(name, sizes, tmp_path):
    overrides = list(SMALL[name])
    if name in list_models(family="ViNet"):
        items = sizes[0]
        shape = (items, 4, 8) if name == "ACF" else (items, 8)
        np.save(tmp_path / f"f{items}.npy", np.zeros(shape, dtype=np.float32))
        overrides.append(f"--v_feat_path={tmp_path / f'f{items}.npy'}")
    if name in list_models(family="PixelNet"):
        overrides += [*TINY_ENCODER, *(["--image_size=224"] if name == "DVBPR" else [])]
    with torch.device("meta"):
        return model(name, sizes, *overrides)[1]


@pytest.mark.parametrize("name", list_models())
def test_id_table_rule_finds_exactly_the_id_tables_of_every_model(name, tmp_path):
    """Inspected on the meta device (as preflight does): item tables, user tables, BERT4Rec's table with its mask
    row, DVBPR's ID half, Pop's counts; never position embeddings, encoders or towers."""
    for sizes in (A, B):
        m = _build_for_rule(name, sizes, tmp_path)
        expected = {n for n in m.state_dict() if ID_TABLE_NAME.match(n)}
        assert set(id_tables(m)) == expected, name


@pytest.fixture(scope="module")
def pixel_source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pixel_source")
    _, source = model("MOSASRec", A, *SMALL["MOSASRec"], *TINY_ENCODER)
    return source, save_source(source, folder / "run" / "best.pth").parent


@pytest.mark.parametrize("parts", ["[encoder]", "[backbone]", "[encoder, backbone]"])
def test_pixelnet_parts(parts, pixel_source):
    source, run = pixel_source
    target, fresh, report = transfer("MOSASRec", run, *SMALL["MOSASRec"], *TINY_ENCODER, f"--init_parts={parts}")
    names = set(target.state_dict())
    encoder = {n for n in names if "visual_encoder" in n}
    assert encoder and any(n.endswith("running_mean") for n in encoder)  # BatchNorm statistics travel too
    want = (encoder if "encoder" in parts else set()) | (names - encoder if "backbone" in parts else set())
    assert set(report.loaded_names) == want
    assert not report.skipped or {e["why"] for e in report.skipped} == {"not_in_init_parts"}
    got, src = target.state_dict(), source.state_dict()
    for n in names:
        assert torch.equal(got[n], src[n] if n in want else fresh[n]), n


def test_shape_mismatch_is_reported_with_both_shapes_and_no_fit_is_an_error(pixel_source):
    _, run = pixel_source
    small = ["--embedding_size=16", "--n_heads=2", "--n_layers=1", *TINY_ENCODER]
    _, _, report = transfer("MOSASRec", run, *small, "--init_parts=[encoder]")
    skipped = by_name(report.skipped)
    head = skipped["item_embedding.visual_encoder.head.0.weight"]
    assert head["why"] == "shape_mismatch" and head["source_shape"] == [32, 96] and head["target_shape"] == [16, 96]
    assert all("visual_encoder.backbone" in n for n in report.loaded_names) and report.loaded_names
    assert by_name(report.initialised)["item_embedding.visual_encoder.head.0.weight"]["why"] == "shape_mismatch"

    with pytest.raises(TransferError) as err:  # the backbone is 16 wide everywhere: nothing of it fits
        transfer("MOSASRec", run, *small, "--init_parts=[backbone]")
    text = str(err.value)
    assert "init_from" in text and str(run) in text and "shape mismatch" in text and "(10, 32)" in text


def test_idnet_backbone_into_pixelnet(tmp_path):
    """An IDNet SASRec's transformer initialises a PixelNet SASRec; its item table has no counterpart there."""
    _, source = model("SASRec", A, *SASREC)
    path = save_source(source, tmp_path / "best.pth")
    target, _, report = transfer("MOSASRec", path, *SMALL["MOSASRec"], *TINY_ENCODER)
    assert set(report.loaded_names) == {n for n in target.state_dict() if "visual_encoder" not in n}
    assert by_name(report.skipped)["item_embedding.weight"]["why"] == "absent_in_target"
    assert {e["why"] for e in report.initialised} == {"absent_in_checkpoint"}  # the encoder: none in an ID model
    with pytest.raises(TransferError, match="no tensor"):
        transfer("MOSASRec", path, *SMALL["MOSASRec"], *TINY_ENCODER, "--init_parts=[encoder]")


def test_bad_sources_fail_on_the_meta_model(tmp_path):
    _, source = model("SASRec", A, *SASREC)
    good = save_source(source, tmp_path / "good.pth")
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    torch.save({"epoch": 3, "note": "no weights"}, tmp_path / "other.pth")
    cases = {tmp_path / "missing.pth": "no such file", tmp_path / "empty_run": "no best.pth",
             tmp_path / "notes.txt": "not a PyTorch checkpoint", tmp_path / "other.pth": "not a model checkpoint"}
    for path, problem in cases.items():
        cfg = build_config([], ["--model=SASRec", *SASREC, f"--init_from={path}"])
        with torch.device("meta"):
            target = create_model("SASRec", cfg, dataset(B))
        with pytest.raises(TransferError) as err:
            check_init_from(target, cfg)
        assert "init_from" in str(err.value) and str(path) in str(err.value) and problem in str(err.value)
    cfg = build_config([], ["--model=SASRec", *SASREC, f"--init_from={good}", "--init_parts=[head]"])
    with pytest.raises(TransferError, match="init_parts"):
        check_init_from(target, cfg)
    cfg = build_config([], ["--model=SASRec", *SASREC, f"--init_from={good}"])
    report, _ = check_init_from(target, cfg)  # the meta model: shapes only, nothing loaded
    assert len(report.loaded) == 19 and target.position_embedding.weight.is_meta


@pytest.fixture(scope="module")
def other_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("otherdata")
    write_csv(sequential_log(n_users=150, n_items=90, min_len=6, max_len=20, p_next=0.8, seed=9), folder / "Other.csv")
    return folder


def test_main_pretrain_then_finetune_on_another_dataset(seq_data, other_data, tmp_path):
    source = run_main(sasrec_args(seq_data, tmp_path / "a", "--epochs=1")).run_dir
    args = ["--config_file", "IDNet/sasrec.yaml", "overall/ID.yaml", f"--data_path={other_data}",
            "--dataset=Other", f"--output_dir={tmp_path / 'b'}", *SASREC, "--show_progress=false", "--epochs=1"]
    proc, run = run_main([*args, f"--init_from={source}"])
    report = json.loads((run / TRANSFER_REPORT_FILE).read_text())
    assert report["checkpoint"] == str(source / "best.pth")
    assert "position_embedding.weight" in {e["name"] for e in report["loaded"]}
    assert [(e["name"], e["why"]) for e in report["skipped"]] == [("item_embedding.weight", "id_table")]
    assert json.loads((run / "result.json").read_text())["epochs_run"] == 1 and "loaded 19 tensors" in proc.stdout

    # a resumed run continues from its own weights: init_from is neither checked nor applied again
    (source / "best.pth").rename(tmp_path / "moved.pth")
    stamp = (run / TRANSFER_REPORT_FILE).stat().st_mtime_ns
    run_main(["--resume", str(run)])
    assert (run / TRANSFER_REPORT_FILE).stat().st_mtime_ns == stamp

    bad, _ = run_main([*args, f"--init_from={source}"], check=False)  # best.pth is gone: fails before training
    assert bad.returncode == 2 and "init_from" in bad.stderr and str(source) in bad.stderr, bad.stderr
    assert [p.parent for p in (tmp_path / "b").glob("*/config.yaml")] == [run]  # no run directory made
