"""Feature extraction for ViNet (python -m REC features): a real covers LMDB, a real timm encoder with random
weights (the same weights in every process: they are drawn after seeding with the config's seed)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from REC.data import load_interactions
from REC.data.cover_pack import pack_covers
from REC.data.covers import CoverStore
from REC.data.synthetic import group_covers, visual_log, write_covers, write_csv
from REC.app.extract import FeatureExtractionError, FeatureExtractor, feature_config
from REC.utils.files import sidecar
from REC.app.features import main
from REC.model import list_models
from REC.model.encoders import Backbone, build_item_encoder
from REC.model.ViNet.feature_table import load_item_features
from REC.model.encoders.timm_encoders import TimmBackbone

from .conftest import ROOT, run_main

COVER, WIDTH = 32, 96  # px of the stored covers; timm test_resnet's pooled width


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """80 items in 4 visual groups; covers.lmdb holds every cover, partial.lmdb lacks three of them."""
    folder = tmp_path_factory.mktemp("featdata")
    frame, groups = visual_log(n_users=150, n_items=80, n_groups=4, min_len=5, max_len=12, p_group=0.9, seed=4)
    write_csv(frame, folder / "Vis.csv")
    write_covers(group_covers(groups, size=COVER, seed=4), folder / "cover")
    assert pack_covers(folder / "Vis.csv", folder / "cover", folder / "covers.lmdb", size=COVER, workers=1).ok
    tokens = load_interactions(str(folder), "Vis").item_tokens.to_list()
    for token in tokens[1:4]:
        (folder / "cover" / f"{token}.png").unlink()
    pack_covers(folder / "Vis.csv", folder / "cover", folder / "partial.lmdb", size=COVER, workers=1)
    return folder


def args(data, *extra):
    return ["--config_file", "overall/ResNet50.yaml", f"--data_path={data}", "--dataset=Vis",
            "--encoder=timm/test_resnet", "--encoder_pretrained=false", f"--image_size={COVER}",
            "--show_progress=false", "--num_workers=0", *extra]


def sidecars(out: Path) -> dict[str, Path]:
    """The files that go with the feature file ``out`` (a per-item array file) finished, or being built."""
    return {"items": sidecar(out, "items.txt"), "meta": sidecar(out, "json"), "partial": Path(f"{out}.part"),
            "progress": sidecar(out, "part.json"), "done": sidecar(out, "done"), "sums": sidecar(out, "sums")}


def chunks_done(out: Path) -> list[int]:
    return np.fromfile(sidecars(out)["done"], dtype=np.uint8).tolist()


def extract(data, out, *extra) -> np.ndarray:
    assert main(args(data, "--output", str(out), *extra)) == 0
    return np.load(out)


@pytest.fixture(scope="module")
def features(data, tmp_path_factory):
    """One uninterrupted extraction in 3 batches of 32 (the reference for the resume tests)."""
    out = tmp_path_factory.mktemp("feat") / "full.npy"
    return out, extract(data, out, "--batch_size=32")


def test_rows_are_the_frozen_backbone_output_without_head(data, features):
    out, array = features
    inter = load_interactions(str(data), "Vis")
    assert array.shape == (inter.item_num, WIDTH) and array.dtype == np.float32
    assert not array[0].any()  # padding
    cfg = feature_config(["overall/ResNet50.yaml"], args(data)[2:])
    torch.manual_seed(cfg["seed"])
    encoder = build_item_encoder(cfg, 8).eval()
    ids = np.array([1, 7, 33, inter.item_num - 1])
    covers = torch.from_numpy(CoverStore(data / "covers.lmdb", inter.item_tokens).get(ids))
    with torch.no_grad():
        expected = encoder.backbone((covers.float() / 255 - 0.5) / 0.5).numpy()  # image_norm half, no resize
    np.testing.assert_allclose(array[ids], expected, rtol=1e-4, atol=1e-5)
    # the sidecars say what each row is and how it was made; full.npy -> full.items.txt, full.json
    files = sidecars(out)
    assert (files["items"].name, files["meta"].name) == ("full.items.txt", "full.json")
    assert files["items"].read_text().splitlines() == inter.item_tokens.to_list()
    meta = json.loads(files["meta"].read_text())
    assert meta["format"] == "pixelrec-item-array" and meta["kind"] == "features" and meta["complete"]
    assert meta["items_file"] == "full.items.txt" and meta["items_sha256"] == inter.item_tokens.digest()
    assert meta["item_num"] == inter.item_num and meta["shape"] == [WIDTH] and len(meta["crc32"]) == 3
    settings = meta["settings"]
    assert settings["shape"] == [inter.item_num, WIDTH] and settings["encoder"] == "timm/test_resnet"
    assert settings["readout"] == "pool" and settings["image_size"] == COVER
    assert not any(files[k].exists() for k in ("partial", "progress", "done", "sums"))


def test_spatial_is_the_map_before_pooling(data, tmp_path):
    """At 64 px the test ResNet's last map is 2x2; its mean over positions is the pooled vector."""
    maps = extract(data, tmp_path / "maps.npy", "--spatial", "--image_size=64")
    pooled = extract(data, tmp_path / "pooled.npy", "--image_size=64")
    assert maps.shape == (pooled.shape[0], 2, 2, WIDTH) and not maps[0].any()
    np.testing.assert_allclose(maps.mean(axis=(1, 2)), pooled, rtol=1e-4, atol=1e-5)


def test_spatial_needs_a_backbone_with_a_feature_map(data, tmp_path, monkeypatch, capsys):
    """Extraction asks the backbone, whatever its class: one that says it has no map fails before any cover is
    read, and one that finds out only when it runs (timm: forward_features' shape) fails as one line too."""
    cfg = feature_config(["overall/ResNet50.yaml"], args(data)[2:])
    with monkeypatch.context() as m:
        m.setattr(TimmBackbone, "has_feature_map", False)
        with pytest.raises(FeatureExtractionError, match="--spatial is not supported .* gives no feature map"):
            FeatureExtractor(cfg, spatial=True)
        FeatureExtractor(cfg)  # pooled features need no map
    monkeypatch.setattr(TimmBackbone, "feature_map", Backbone.feature_map)  # has_feature_map, yet none at run time
    assert main(args(data, "--output", str(tmp_path / "f.npy"), "--spatial")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --spatial is not supported for encoder 'timm/test_resnet'") and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_resume_after_interruption_equals_one_run(data, features, tmp_path, capsys):
    _, full = features
    out = tmp_path / "resumed.npy"
    assert main(args(data, "--output", str(out), "--batch_size=32", "--max_batches=2")) == 0
    files = sidecars(out)
    assert not out.exists() and files["partial"].exists() and chunks_done(out) == [1, 1, 0]
    capsys.readouterr()
    resumed = extract(data, out, "--batch_size=32")
    assert "continuing with 1 of 3 chunks left" in capsys.readouterr().out
    np.testing.assert_array_equal(resumed, full)
    # the rest with another batch size (e.g. after running out of memory): the same rows, up to float rounding
    out = tmp_path / "smaller_batches.npy"
    assert main(args(data, "--output", str(out), "--batch_size=32", "--max_batches=1")) == 0
    np.testing.assert_allclose(extract(data, out, "--batch_size=5"), full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("names", ["sidecar", "npy suffix"])
def test_files_of_the_earlier_formats_still_serve(data, features, tmp_path, capsys, names):
    """Before the shared per-item file type, a feature file came with F.json (F.npy.json before the sidecar rule)
    holding its items' sha256 and a whole-file checksum record, and an interrupted run left F.partial with its
    progress in F.partial.json (F.npy.partial, F.npy.partial.json): such a feature file loads as it is, its
    identity and bytes still checked, and such a partial file is continued, not started afresh."""
    from REC.model.ViNet.feature_table import FeatureFileError
    from REC.utils.integrity import checksum_record
    full_path, full = features
    settings = json.loads(sidecars(full_path)["meta"].read_text())["settings"]
    inter = load_interactions(str(data), "Vis")
    out = tmp_path / "old.npy"
    stem = "old" if names == "sidecar" else "old.npy"
    partial = np.lib.format.open_memmap(tmp_path / f"{stem}.partial", mode="w+", dtype=np.float32, shape=full.shape)
    partial[1:40] = full[1:40]  # rows 1..39 done by batches of 32: one whole chunk, and 7 rows of the next
    partial.flush()
    del partial
    (tmp_path / f"{stem}.partial.json").write_text(json.dumps(
        {"format": "pixelrec-features", "version": 1, "settings": settings, "rows_done": 40, "batch_size": 32}))
    capsys.readouterr()
    np.testing.assert_array_equal(extract(data, out, "--batch_size=32"), full)
    assert "continuing with 2 of 3 chunks left" in capsys.readouterr().out
    # the lock stays (removing it could let a process that waited on it build beside a new one); nothing else
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.items.txt", "old.json", "old.lock", "old.npy"]
    # a finished file of the earlier format
    legacy = tmp_path / "legacy.npy"
    np.save(legacy, full)
    meta_name = "legacy.json" if names == "sidecar" else "legacy.npy.json"
    meta = {"format": "pixelrec-features", "version": 1, **settings, "checksum": checksum_record(legacy)}
    (tmp_path / meta_name).write_text(json.dumps(meta))
    table = load_item_features(legacy, len(full), expected_width=WIDTH, item_ids=inter.item_tokens.digest())
    np.testing.assert_array_equal(table.numpy(), full)
    with pytest.raises(FeatureFileError, match="with another item list"):
        load_item_features(legacy, len(full), expected_width=WIDTH, item_ids="0" * 64)


def test_a_partial_file_of_other_settings_is_an_error_until_restart(data, features, tmp_path, capsys):
    _, full = features
    out = tmp_path / "changed.npy"
    assert main(args(data, "--output", str(out), "--batch_size=16", "--max_batches=1")) == 0
    capsys.readouterr()
    assert main(args(data, "--output", str(out), "--image_size=24")) == 2
    err = capsys.readouterr().err
    assert "was started with other settings (image_size: 32 then, 24 now" in err and "--restart" in err
    assert sidecars(out)["partial"].exists() and chunks_done(out) == [1, 0, 0, 0, 0]  # kept
    np.testing.assert_array_equal(extract(data, out, "--restart"), full)


def test_an_interrupted_batch_loop_keeps_the_rows_done(data, features, tmp_path, monkeypatch):
    """Ctrl-C in the middle: the rows written before it are recorded, and a rerun finishes the same file."""
    _, full = features
    out = tmp_path / "ctrl_c.npy"
    calls = {"n": 0}
    forward = FeatureExtractor.forward

    def interrupted(self, covers):
        calls["n"] += 1
        if calls["n"] == 3:  # the probe, one batch, then Ctrl-C
            raise KeyboardInterrupt
        return forward(self, covers)

    monkeypatch.setattr(FeatureExtractor, "forward", interrupted)
    assert main(args(data, "--output", str(out), "--batch_size=32")) == 130
    assert chunks_done(out) == [1, 0, 0]
    monkeypatch.setattr(FeatureExtractor, "forward", forward)
    np.testing.assert_array_equal(extract(data, out, "--batch_size=32"), full)


@pytest.mark.parametrize("extra, message", [
    (["--cover_lmdb={data}/nowhere.lmdb"], "covers database {data}/nowhere.lmdb does not exist"),
    (["--cover_lmdb={data}/partial.lmdb"], "has no cover for 3 of the|e.g. {first}, "),
    (["--encoder=timm/no_such_net"], "timm has no model 'no_such_net'"),
    (["--encoder=nope"], "unknown encoder 'nope'"),
    (["--output={data}/features.txt"], "must end in .npy"),
])
def test_bad_inputs_are_one_line_errors(data, tmp_path, capsys, extra, message):
    extra = [e.format(data=data) for e in extra]
    out = [] if any(e.startswith("--output") for e in extra) else ["--output", str(tmp_path / "f.npy")]
    assert main(args(data, *out, *extra)) == 2
    err = capsys.readouterr().err
    first = load_interactions(str(data), "Vis").item_tokens[1]  # the first item whose cover was removed
    assert err.startswith("error: ") and err.count("\n") == 1
    for part in message.split("|"):
        assert part.format(data=data, first=first) in err
    assert not (tmp_path / "f.npy").exists()


def test_an_existing_output_needs_overwrite(data, features, capsys):
    out, full = features
    assert main(args(data, "--output", str(out))) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    np.testing.assert_array_equal(extract(data, out, "--overwrite"), full)


def test_command_line_exit_status_without_traceback(data, tmp_path):
    argv = args(data, "--output", str(tmp_path / "f.npy"), "--cover_lmdb=/nonexistent")
    proc = subprocess.run([sys.executable, "-m", "REC", "features", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: covers database /nonexistent")


@pytest.mark.skipif("VBPR" not in list_models(), reason="ViNet VBPR is not in this tree yet")
def test_vbpr_trains_on_extracted_features(data, features, tmp_path):
    out, _ = features
    proc = run_main(["--config_file", "ViNet/vbpr.yaml", "overall/ID.yaml", f"--data_path={data}", "--dataset=Vis",
                     f"--v_feat_path={out}", f"--v_feat_dim={WIDTH}", "--embedding_size=32", "--epochs=1",
                     "--show_progress=false", f"--output_dir={tmp_path}"])
    result = proc.result
    # 150 users, 80 items (+ a padding row each), d' = 32 / 2: gamma_u, theta_u, gamma_i, and E and beta' read the
    # 96-wide extracted rows
    assert result["trainable_parameters"] == 2 * 151 * 16 + 81 * 16 + 96 * 16 + 96
    # one epoch from the config's seed on these features (deterministic; below Pop after one epoch: this pins the
    # path from extraction to evaluation, test_vinet checks that VBPR learns)
    assert result["test"] == pytest.approx({"recall@5": 0.0466667, "recall@10": 0.1, "ndcg@5": 0.0280292,
                                            "ndcg@10": 0.0446599}, abs=1e-6)


def test_resizing_matches_pixelnet(data, tmp_path):
    """Covers stored at 32 px and extracted at 48: resized on the device as PixelNet does (bilinear, antialias)."""
    array = extract(data, tmp_path / "48.npy", "--image_size=48")
    inter = load_interactions(str(data), "Vis")
    cfg = feature_config(["overall/ResNet50.yaml"], args(data, "--image_size=48")[2:])
    torch.manual_seed(cfg["seed"])
    encoder = build_item_encoder(cfg, 8).eval()
    covers = torch.from_numpy(CoverStore(data / "covers.lmdb", inter.item_tokens).get(np.array([2, 5])))
    x = F.interpolate(covers.float() / 255, size=(48, 48), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        expected = encoder.backbone((x - 0.5) / 0.5).numpy()
    np.testing.assert_allclose(array[[2, 5]], expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ a feature file damaged, or made for another
def copy_features(out, folder):
    import shutil
    folder.mkdir()
    for f in [out, *sidecars(out).values()]:
        if f.exists():
            shutil.copy(f, folder / f.name)
    return folder / out.name


@pytest.mark.parametrize("kind", ["two rows swapped", "bytes flipped", "header damaged", "cut by 64 bytes"])
def test_a_damaged_feature_file_is_one_line_naming_it(data, features, tmp_path, kind):
    from REC.model.ViNet.feature_table import FeatureFileError

    from .damage import DAMAGE
    out, array = features
    inter = load_interactions(str(data), "Vis")
    path = copy_features(out, tmp_path / "f")
    good = load_item_features(path, inter.item_num, expected_width=WIDTH, item_ids=inter.item_tokens.digest())
    assert torch.equal(good, torch.from_numpy(array))
    DAMAGE[kind](path)
    with pytest.raises(FeatureFileError) as err:
        load_item_features(path, inter.item_num, expected_width=WIDTH, item_ids=inter.item_tokens.digest())
    message = str(err.value)
    why = {"two rows swapped": "chunks are not the ones written", "bytes flipped": "chunks are not the ones written",
           "header damaged": "header cannot be read", "cut by 64 bytes": "truncated"}[kind]
    assert "\n" not in message and str(path) in message and why in message and "python -m REC features" in message, message


def test_features_of_another_dataset_with_as_many_items_are_refused_before_the_run(data, features, tmp_path, capsys):
    """The same items in another order (the CSV's users reversed, so items first appear elsewhere): the row count
    fits, the rows do not. The launcher refuses it in one line, before any process starts."""
    import pandas as pd

    from REC.app.launch import main as launch_main

    from .conftest import call_main
    out, _ = features
    frame = pd.read_csv(data / "Vis.csv", dtype=str)
    other = tmp_path / "other"
    other.mkdir()
    frame.iloc[::-1].to_csv(other / "Vis.csv", index=False)
    mine, theirs = (load_interactions(str(d), "Vis") for d in (data, other))
    assert mine.item_num == theirs.item_num and mine.item_tokens.to_list() != theirs.item_tokens.to_list()
    status, _, err = call_main(launch_main, ["--config_file", "ViNet/vbpr.yaml", "overall/ID.yaml",
                                             f"--data_path={other}", "--dataset=Vis", f"--v_feat_path={out}",
                                             f"--v_feat_dim={WIDTH}", f"--output_dir={tmp_path / 'runs'}"], capsys)
    line = err.strip().splitlines()[-1]
    assert status == 2 and "Traceback" not in err, err[-2000:]
    assert line.startswith("error: ") and "was made for dataset 'Vis'" in line, line
    assert "not for this run's items" in line and "the same ones in another order" in line, line
    assert not (tmp_path / "runs").exists()


def test_an_incomplete_checksum_record_is_one_line(data, features, tmp_path):
    from REC.model.ViNet.feature_table import FeatureFileError
    out, _ = features
    inter = load_interactions(str(data), "Vis")
    path = copy_features(out, tmp_path / "f")
    meta_path = sidecars(path)["meta"]
    meta = json.loads(meta_path.read_text())
    del meta["crc32"][-1]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(FeatureFileError, match="records no checksum per chunk") as err:
        load_item_features(path, inter.item_num, item_ids=inter.item_tokens.digest())
    assert "\n" not in str(err.value) and str(path) in str(err.value)
