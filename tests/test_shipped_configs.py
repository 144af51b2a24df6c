"""Every shipped YAML combination builds its model, as a user's command would combine the files: each IDNet recipe
with overall/ID.yaml, each PixelNet recipe with each image-encoder file of overall/, each ViNet recipe with
overall/ID.yaml. The config goes through ``build_config`` (file layering, model defaults, range checks) and the
model is built for shapes only, on the meta device: no memory, no pretrained weights, no cover read.

The data is a tiny log written once for the module; a ViNet recipe gets a feature file of its configured width
(``v_feat_dim``) with one row per item of that log, since the shape check reads the file's header.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from REC.data import prepare_split
from REC.data.synthetic import sequential_log, write_csv
from REC.data.training import TRAIN_DATASETS
from REC.model import create_model
from REC.model.base import DatasetInfo
from REC.app.configure import build_config

ROOT = Path(__file__).resolve().parents[1]


def shipped(folder: str) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in sorted((ROOT / folder).glob("*.yaml"))]


# layered after a run's shared file: every trained IDNet recipe and every PixelNet one takes it
OBJECTIVE_FILES = ["overall/sampled_softmax.yaml"]
ENCODER_FILES = [f for f in shipped("overall") if f != "overall/ID.yaml" and f not in OBJECTIVE_FILES]
TRAINED_ID = [r for r in shipped("IDNet") if r != "IDNet/pop.yaml"]
CASES = ([(recipe, "overall/ID.yaml") for recipe in shipped("IDNet")]
         + [(recipe, overall) for recipe in shipped("PixelNet") for overall in ENCODER_FILES]
         + [(recipe, "overall/ID.yaml") for recipe in shipped("ViNet")]
         + [(recipe, "overall/ID.yaml", extra) for recipe in TRAINED_ID for extra in OBJECTIVE_FILES]
         + [(recipe, "overall/ViT.yaml", extra) for recipe in shipped("PixelNet") for extra in OBJECTIVE_FILES])


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """A 40-user, 30-item log (Tiny.csv), its folder and its split."""
    folder = tmp_path_factory.mktemp("shipped")
    write_csv(sequential_log(n_users=40, n_items=30, min_len=5, max_len=12, seed=5), folder / "Tiny.csv")
    _, split = prepare_split(build_config(["IDNet/sasrec.yaml", "overall/ID.yaml"], overrides(folder)))
    return folder, split


@pytest.fixture(scope="module")
def data(split) -> tuple[Path, DatasetInfo]:
    """The data folder and the DatasetInfo of a shapes-only build."""
    folder, split = split
    return folder, DatasetInfo.from_split(split, shapes_only=True)


def overrides(folder: Path) -> list[str]:
    return [f"--data_path={folder}", "--dataset=Tiny", "--show_progress=false"]


def feature_file(folder: Path, item_num: int, model: str, width: int) -> Path:
    """A zero feature table that fits the model: ACF reads one region map per item, the others one vector."""
    shape = (item_num, 2, 2, width) if model == "ACF" else (item_num, width)
    path = folder / f"features-{'x'.join(map(str, shape))}.npy"
    if not path.exists():
        np.save(path, np.zeros(shape, np.float32))
    return path


def config_for(files: tuple[str, str], folder: Path, info: DatasetInfo):
    config = build_config(list(files), overrides(folder))
    if files[0].startswith("ViNet/"):
        path = feature_file(folder, info.item_num, config["model"], config["v_feat_dim"])
        config = build_config(list(files), [*overrides(folder), f"--v_feat_path={path}"])
    return config


@pytest.mark.parametrize("files", CASES, ids="+".join)
def test_shipped_combination_builds_on_the_meta_device(files, data):
    folder, info = data
    config = config_for(files, folder, info)
    model = create_model(config["model"], config, info)
    assert type(model).__name__ == config["model"] and model.family == files[0].split("/")[0]
    assert model.input_type is None or model.input_type in TRAIN_DATASETS, model.input_type
    assert (model.encodes_covers) == (model.family == "PixelNet")
    params = list(model.parameters())
    assert all(p.device.type == "meta" for p in params)  # shapes only: nothing materialised
    if model.input_type is not None:  # a model that trains has something to train
        assert sum(p.numel() for p in params if p.requires_grad) > 0
    assert (model.objective is not None) == (config["loss"] != "paper")


@pytest.mark.parametrize("files", [("IDNet/sasrec.yaml", "overall/ID.yaml"), ("ViNet/vbpr.yaml", "overall/ID.yaml")],
                         ids="+".join)
def test_the_meta_build_has_the_shapes_of_the_real_one(files, split):
    """The shape check stands for the real model: the same parameter names and shapes as a CPU build (two cheap
    recipes: the shipped sizes on a 30-item catalogue)."""
    folder, split = split
    info = DatasetInfo.from_split(split, shapes_only=True)
    config = config_for(files, folder, info)
    meta = create_model(config["model"], config, info)
    real = create_model(config["model"], config, DatasetInfo.from_split(split))
    assert {n: p.device.type for n, p in real.named_parameters()} == {n: "cpu" for n, _ in real.named_parameters()}
    assert {n: tuple(p.shape) for n, p in meta.named_parameters()} == {n: tuple(p.shape)
                                                                       for n, p in real.named_parameters()}
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in real.parameters())


def test_every_shipped_file_is_covered():
    """Each recipe and each overall/ file appears in some case, so a new shipped file is checked too."""
    named = {f for case in CASES for f in case}
    assert named == set(shipped("IDNet") + shipped("PixelNet") + shipped("ViNet") + shipped("overall"))
    assert len(CASES) == (len(shipped("IDNet")) + len(shipped("PixelNet")) * len(ENCODER_FILES) + len(shipped("ViNet"))
                          + (len(TRAINED_ID) + len(shipped("PixelNet"))) * len(OBJECTIVE_FILES))


def test_a_shapes_only_build_reads_no_encoder_weights(data, monkeypatch):
    """The shipped PixelNet files ask for pretrained weights (encoder_pretrained: true); the shape check must not
    fetch them (no network here)."""
    import open_clip
    import timm
    monkeypatch.setattr(open_clip, "download_pretrained", lambda *a, **k: pytest.fail("open_clip download"))
    real_create = timm.create_model

    def no_download(*args, **kwargs):
        assert not kwargs.get("pretrained"), "timm download"
        return real_create(*args, **kwargs)
    monkeypatch.setattr(timm, "create_model", no_download)
    folder, info = data
    for overall in ("overall/RN50.yaml", "overall/ResNet50.yaml"):
        config = config_for(("PixelNet/sasrec.yaml", overall), folder, info)
        assert config["encoder_pretrained"] is True
        assert create_model(config["model"], config, info).cover_items_module.visual_encoder is not None


@pytest.mark.parametrize("shared", ["overall/ID.yaml", *ENCODER_FILES])
def test_a_shared_file_sets_only_what_differs_from_the_package_defaults(shared):
    """So a change to REC/config/defaults.yaml reaches every documented command (a restated default would hide
    it). The objective files are recipes: they state their measured settings whatever the defaults."""
    import yaml

    from REC.config.config import DEFAULTS_FILE, read_defaults
    defaults, _ = read_defaults(DEFAULTS_FILE)
    restated = []
    for key, value in (yaml.safe_load((ROOT / shared).read_text()) or {}).items():
        top, _, sub = key.partition(".")
        default = defaults.get(top, {}).get(sub, object()) if sub else defaults.get(key, object())
        if value == default:
            restated.append(key)
    assert not restated, f"{shared} restates the package defaults of {restated}"
