"""Config merging, overrides and every promised error."""
import pytest

from REC.config import Config, ConfigError
from REC.run import build_config

BASE = ["IDNet/sasrec.yaml", "overall/ID.yaml"]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_files_merge_left_to_right_over_defaults(tmp_path):
    extra = write(tmp_path, "a.yaml", "epochs: 7\ntrain_batch_size: 32\n")
    later = write(tmp_path, "b.yaml", "epochs: 9\n")
    cfg = build_config([*BASE, extra, later])
    assert cfg["epochs"] == 9 and cfg["train_batch_size"] == 32
    assert cfg["n_heads"] == 4 and cfg["dist_timeout_s"] == 1800  # from the model file, from the package defaults
    assert cfg.source_of("epochs") == later and cfg.source_of("n_heads") == "IDNet/sasrec.yaml"


def test_overrides_are_yaml_typed_and_dotted(tmp_path):
    cfg = build_config(BASE, ["--epochs=3", "--optim_args.learning_rate=1e-3", "--topk=[1,10]",
                              "--hidden_act=relu", "--precision=bf16"])
    assert cfg["epochs"] == 3 and isinstance(cfg["epochs"], int)
    assert cfg["optim_args"] == {"learning_rate": 1e-3, "weight_decay": 0.1}
    assert cfg["topk"] == (1, 10) and cfg["hidden_act"] == "relu" and cfg["precision"] == "bf16"
    assert cfg.source_of("optim_args") == "command line"


def test_scientific_notation_without_dot_is_a_float(tmp_path):
    f = write(tmp_path, "lr.yaml", "optim_args:\n  learning_rate: 5e-5\n  weight_decay: 0\n")
    assert build_config([*BASE, f])["optim_args"]["learning_rate"] == 5e-5


def test_a_mapping_in_a_later_file_replaces_the_earlier_one(tmp_path):
    f = write(tmp_path, "two.yaml", "optim_args: {modal_lr: 1.0e-4, modal_decay: 0, rec_lr: 1.0e-3, rec_decay: 0.1}\n")
    assert set(build_config([*BASE, f])["optim_args"]) == {"modal_lr", "modal_decay", "rec_lr", "rec_decay"}


def test_unknown_key_suggests_the_close_one(tmp_path):
    f = write(tmp_path, "typo.yaml", "train_batchsize: 64\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown key 'train_batchsize' \(did you mean 'train_batch_size'"):
        build_config([*BASE, f])
    with pytest.raises(ConfigError, match=r"command line: unknown key 'epoch' \(did you mean 'epochs'"):
        build_config(BASE, ["--epoch=3"])


def test_wrong_type_names_file_key_and_expectation(tmp_path):
    f = write(tmp_path, "bad.yaml", "epochs: ten\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: key 'epochs' = 'ten'; expected an integer"):
        build_config([*BASE, f])
    with pytest.raises(ConfigError, match=r"command line: key 'precision' = 'fp8'; expected one of"):
        build_config(BASE, ["--precision=fp8"])
    with pytest.raises(ConfigError, match=r"key 'optim_args'.*expected numbers under exactly"):
        build_config(BASE, ["--optim_args.lr=1"])
    with pytest.raises(ConfigError, match=r"key 'valid_metric' = 'NDCG@20'"):
        build_config(BASE, ["--valid_metric=NDCG@20"])


def test_unknown_model_lists_known_models(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown model 'SASrec' \(did you mean 'SASRec'.*\?\); known models: \[.*'SASRec'"):
        build_config(BASE, ["--model=SASrec"])


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file 'nope.yaml' does not exist"):
        build_config(["nope.yaml"])
    f = write(tmp_path, "broken.yaml", "epochs: [1,\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        build_config([*BASE, f])
    with pytest.raises(ConfigError, match="overrides look like --key=value"):
        build_config(BASE, ["--epochs"])


def test_config_is_read_only_and_round_trips(tmp_path):
    cfg = build_config(BASE, ["--epochs=4"])
    with pytest.raises(TypeError):
        cfg.epochs = 5
    with pytest.raises(TypeError):
        cfg["optim_args"]["learning_rate"] = 1.0
    saved = write(tmp_path, "resolved.yaml", cfg.dump_yaml())
    again = build_config([saved])
    assert isinstance(again, Config) and again.to_dict() == cfg.to_dict()
