"""Values that would train the wrong way are refused before training, each with one line naming the source, the
key, the value and what was expected: the ranges declared beside every default, the optimizer's rates, the
model's cross-key constraints, and topk against the dataset's item count."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from REC.config import ConfigError
from REC.config.config import DEFAULTS_FILE, read_defaults
from REC.model import create_model, list_models, model_defaults_files
from REC.model.base import DatasetInfo
from REC.app.configure import build_config
from REC.app.train import preflight

from REC.app.launch import main

from .conftest import ROOT, call_main, sasrec_args

BASE = ["IDNet/sasrec.yaml", "overall/ID.yaml"]
NUMERIC = ("int", "float", "list[int]", "list[float]", "dict[float]")


def numeric_specs():
    """(model to build the config with, spec) of every numeric key: the package's, then each model's own."""
    _, package = read_defaults(DEFAULTS_FILE)
    out = [("SASRec", s) for s in package.values() if s.base in NUMERIC]
    for model in list_models():
        for path in model_defaults_files(model):
            _, specs = read_defaults(path)
            out += [(model, s) for s in specs.values() if s.base in NUMERIC]
    return out


def outside(spec) -> list:
    """Values just outside the declared range (each bound), plus NaN and infinity for floats."""
    r, is_int = spec.range, spec.base in ("int", "list[int]")
    step = 1 if is_int else 0.5
    bad = []
    if r.lo is not None:
        bad.append(r.lo - step if r.lo_closed else r.lo)
    if r.hi is not None:
        bad.append(r.hi + step if r.hi_closed else r.hi)
    bad = [int(v) if is_int else v for v in bad]
    if not is_int:
        bad += [math.nan, math.inf]
    return [[v] if spec.base.startswith("list") else v for v in bad]


def as_yaml(v) -> str:
    if isinstance(v, list):
        return "[" + ",".join(as_yaml(x) for x in v) + "]"
    if isinstance(v, float) and math.isnan(v):
        return ".nan"
    if isinstance(v, float) and math.isinf(v):
        return ".inf"
    return repr(v)


CASES = [pytest.param(model, spec.key, v, id=f"{model}-{spec.key}={as_yaml(v)}")
         for model, spec in numeric_specs() if spec.base != "dict[float]" for v in outside(spec)]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ----------------------------------------------------------------------------------------------- declarations
def test_every_numeric_key_declares_its_range_and_its_default_fits():
    specs = numeric_specs()
    assert len(specs) > 40
    undeclared = sorted({f"{s.origin}: {s.key}" for _, s in specs if s.range is None})
    assert not undeclared, f"numeric keys without a range, e.g. int(>0): {undeclared}"
    assert all(s.check(s.default) is None for _, s in specs)


@pytest.mark.parametrize("model,key,value", CASES)
def test_a_value_outside_the_declared_range_is_refused_naming_the_key(model, key, value):
    with pytest.raises(ConfigError, match=rf"^command line: key '{key}' = .*; expected "):
        build_config([], [f"--model={model}", f"--{key}={as_yaml(value)}"])


def test_the_line_names_source_key_value_and_range(tmp_path):
    def message(files, overrides=()):
        with pytest.raises(ConfigError) as err:
            build_config(files, overrides)
        return str(err.value)

    assert message(BASE, ["--hidden_dropout_prob=1.0"]) == \
        "command line: key 'hidden_dropout_prob' = 1.0; expected a finite number in [0, 1)"
    f = write(tmp_path, "eps.yaml", "layer_norm_eps: 0\n")
    assert message([*BASE, f]) == f"{f}: key 'layer_norm_eps' = 0; expected a finite number > 0"
    assert message(BASE, ["--image_size=0"]) == "command line: key 'image_size' = 0; expected an integer > 0 or null"
    assert message(BASE, ["--topk=[0,10]"]) == \
        "command line: key 'topk' = [0, 10]; expected a list of integers, each > 0"
    assert message(BASE, ["--encoder_trainable_blocks=-2"]) == \
        "command line: key 'encoder_trainable_blocks' = -2; expected an integer >= -1 or null"


def test_values_at_the_bounds_and_null_are_accepted():
    cfg = build_config(BASE, ["--hidden_dropout_prob=0", "--eval_step=0", "--encoder_trainable_blocks=-1",
                              "--train_user_ratio=1", "--cold_item_ratio=0.0", "--clip_grad_norm=null",
                              "--image_size=null", "--encoder_head_layers=[]", "--popularity_buckets=[]"])
    assert cfg["hidden_dropout_prob"] == 0 and cfg["encoder_trainable_blocks"] == -1


def test_unset_model_keys_are_attributed_to_the_model_file():
    cfg = build_config(BASE)
    assert cfg.source_of("n_heads") == "IDNet/sasrec.yaml"          # set by the shipped config file
    assert cfg.source_of("attn_dropout_prob") == "IDNet/sasrec.yaml"
    cfg = build_config([], ["--model=SASRec"])
    assert cfg.source_of("n_heads") == str(Path("REC/model/IDNet/sasrec.yaml"))  # the model's own defaults
    assert cfg.source_of("epochs") == "defaults" and cfg.source_of("model") == "command line"


def test_a_malformed_range_declaration_is_an_error(tmp_path):
    path = write(tmp_path, "d.yaml", "a: 1  # int(~0): a\n")
    with pytest.raises(ConfigError, match=r"key 'a' documents a range '\(~0\)'"):
        read_defaults(path)
    path = write(tmp_path, "e.yaml", "a: 1  # integer: a\n")
    with pytest.raises(ConfigError, match=r"key 'a' documents unknown type 'integer'"):
        read_defaults(path)
    _, specs = read_defaults(write(tmp_path, "f.yaml", "a: 0.5  # float(0,1]: a\nb: [1]  # list[int](>=1): b\n"))
    a, b = specs["a"], specs["b"]
    assert a.check(1) is None and a.check(0) == "a finite number in (0, 1]" and a.check(True) is not None
    assert b.check([1, 2]) is None and b.check([1, 0]) == "a list of integers, each >= 1"


# ----------------------------------------------------------------------------------------------- optimizer
ONE = ("learning_rate", "weight_decay")
TWO = ("modal_lr", "modal_decay", "rec_lr", "rec_decay")


@pytest.mark.parametrize("entry", ONE + TWO)
@pytest.mark.parametrize("bad", ["-1.0e-3", ".nan", ".inf", "-.inf"])
def test_negative_or_non_finite_rates_and_decays_are_refused(entry, bad):
    group = dict.fromkeys(ONE if entry in ONE else TWO, "0.001")
    group[entry] = bad
    text = "{" + ", ".join(f"{k}: {v}" for k, v in group.items()) + "}"
    with pytest.raises(ConfigError, match=rf"^command line: key 'optim_args' = .*; expected a mapping of finite "
                                          rf"numbers, each >= 0 \({entry} = .* is not\)$"):
        build_config(BASE, [f"--optim_args={text}"])


def test_negative_rate_from_a_file_names_the_file_and_zero_freezes(tmp_path):
    f = write(tmp_path, "lr.yaml", "optim_args.learning_rate: -1.0e-4\n")
    with pytest.raises(ConfigError) as err:
        build_config([*BASE, f])
    assert str(err.value) == (f"{f}: key 'optim_args' = {{'learning_rate': -0.0001, 'weight_decay': 0.1}}; expected "
                              f"a mapping of finite numbers, each >= 0 (learning_rate = -0.0001 is not)")
    # a rate of 0 is a legitimate way to freeze a group (the image encoder), and decay 0 means none
    cfg = build_config(["PixelNet/sasrec.yaml", "overall/ViT.yaml"], ["--optim_args.modal_lr=0"])
    assert cfg["optim_args"]["modal_lr"] == 0


@pytest.mark.parametrize("bad", ["-1", "0", ".inf", ".nan"])
def test_clip_grad_norm_must_be_positive_or_null(bad):
    with pytest.raises(ConfigError, match=r"^command line: key 'clip_grad_norm' = .*; expected a finite number > 0 "
                                          r"or null$"):
        build_config(BASE, [f"--clip_grad_norm={bad}"])
    assert build_config(BASE, ["--clip_grad_norm=1.0"])["clip_grad_norm"] == 1.0


# ----------------------------------------------------------------------------------------------- model shapes
INFO = DatasetInfo.from_pairs(50, 40, np.arange(1, 40), np.arange(1, 40))


def model_error(files, overrides) -> str:
    cfg = build_config(files, overrides)
    with pytest.raises(ValueError) as err, torch.device("meta"):
        create_model(cfg["model"], cfg, INFO)
    return str(err.value)


@pytest.mark.parametrize("family_file", ["IDNet/sasrec.yaml", "IDNet/bert4rec.yaml", "IDNet/lightsans.yaml",
                                         "PixelNet/sasrec.yaml", "ViNet/sasrec_v.yaml"])
def test_n_heads_not_dividing_embedding_size_names_both_keys_and_sources(family_file, tmp_path):
    sets_size = {"PixelNet/sasrec.yaml": "IDNet/sasrec.yaml"}.get(family_file, family_file)  # inherited
    assert model_error([family_file], ["--n_heads=3"]) == (
        f"command line: key 'n_heads' = 3; expected a divisor of key 'embedding_size' = 512 ({sets_size})")
    f = write(tmp_path, "d.yaml", "embedding_size: 30\n")
    assert model_error([family_file, f], ["--n_heads=4"]) == (
        f"command line: key 'n_heads' = 4; expected a divisor of key 'embedding_size' = 30 ({f})")


def test_other_model_shape_errors_name_key_and_source(tmp_path):
    assert model_error(["IDNet/dssm.yaml"], ["--embedding_size=16", "--mlp_hidden_size=[16,8]"]) == (
        "command line: key 'mlp_hidden_size' = [16, 8]; expected [] or widths that start and end with key "
        "'embedding_size' = 16 (command line)")
    assert model_error(["ViNet/vbpr.yaml"], ["--embedding_size=33"]) == (
        "command line: key 'embedding_size' = 33; expected an even number: VBPR splits it between the ID and the "
        "visual factors")
    f = write(tmp_path, "dv.yaml", "embedding_size: 33\n")
    assert model_error(["PixelNet/dvbpr.yaml", f], []) == (
        f"{f}: key 'embedding_size' = 33; expected an even number: half ID factors, half visual factors")


def test_models_built_from_a_plain_mapping_still_name_the_key():
    cfg = dict(build_config(["IDNet/sasrec.yaml"]), n_heads=3)
    with pytest.raises(ValueError, match=r"^config: key 'n_heads' = 3; expected a divisor of key 'embedding_size'"):
        create_model("SASRec", cfg, INFO)


# ----------------------------------------------------------------------------------------------- topk vs data
def test_topk_may_not_exceed_the_number_of_items(seq_data):
    args = [f"--data_path={seq_data}", "--dataset=Seq", "--embedding_size=32", "--n_heads=2", "--n_layers=1"]
    _, split = preflight(build_config(BASE, args))
    n = split.item_num - 1
    preflight(build_config(BASE, [*args, f"--topk=[5,{n}]", "--valid_metric=NDCG@5"]))  # every item: fine
    with pytest.raises(ConfigError) as err:
        preflight(build_config(BASE, [*args, f"--topk=[5,{n + 1}]", "--valid_metric=NDCG@5"]))
    assert str(err.value) == (f"command line: key 'topk' = [5, {n + 1}]; expected cut-offs of at most {n}, the "
                              f"number of items of dataset 'Seq'")


# ----------------------------------------------------------------------------------------------- main.py
def test_main_refuses_before_any_run_directory(seq_data, tmp_path, capsys):
    """Out of range, a negative learning rate, and topk beyond the items: exit status 2, one line, no run
    directory."""
    cases = {
        "--hidden_dropout_prob=1.5": "command line: key 'hidden_dropout_prob' = 1.5; expected a finite number in [0, 1)",
        "--optim_args.learning_rate=-1e-3": "(learning_rate = -0.001 is not)",
        "--topk=[5,1000]": "command line: key 'topk' = [5, 1000]; expected cut-offs of at most",
    }
    out = tmp_path / "runs"
    for arg, message in cases.items():
        status, stdout, stderr = call_main(main, sasrec_args(seq_data, out, arg, "--valid_metric=NDCG@5"), capsys)
        assert status == 2 and message in stderr, (arg, stdout[-2000:], stderr[-2000:])
        assert stderr.strip().splitlines() == [line for line in stderr.splitlines() if message in line]
    assert not out.exists()  # no run directory for a run that cannot start


# ----------------------------------------------------------------------------------------------- shipped files
SHIPPED = ([[str(p.relative_to(ROOT)), "overall/ID.yaml"] for fam in ("IDNet", "ViNet")
            for p in sorted((ROOT / fam).glob("*.yaml"))]
           + [[str(p.relative_to(ROOT))] for p in sorted((ROOT / "PixelNet").glob("*.yaml"))]
           + [["PixelNet/sasrec.yaml", str(p.relative_to(ROOT))] for p in sorted((ROOT / "overall").glob("*.yaml"))]
           + [["IDNet/sasrec.yaml", "overall/ID.yaml", "demo/demo.yaml"],
              ["PixelNet/sasrec.yaml", "demo/demo.yaml", "demo/pixel.yaml"]])


@pytest.mark.parametrize("files", SHIPPED, ids=lambda files: "+".join(files))
def test_every_shipped_config_file_is_in_range(files):
    build_config(files)
