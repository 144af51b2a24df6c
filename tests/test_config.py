"""Config merging, overrides and every promised error."""
import pytest

from REC.config import Config, ConfigError
from REC.app.configure import build_config

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


# ----------------------------------------------------------------------------------------------- inherit, layers
def test_inherit_layers_the_parent_first_and_the_file_overrides_it(tmp_path):
    write(tmp_path, "parent.yaml", "model: SASRec\nn_layers: 3\nn_heads: 4\n")
    (tmp_path / "sub").mkdir()
    child = write(tmp_path, "sub/child.yaml", "inherit: ../parent.yaml\nn_heads: 8\n")
    cfg = build_config([child, "overall/ID.yaml"])
    assert cfg["n_layers"] == 3 and cfg["n_heads"] == 8
    assert cfg.source_of("n_layers").endswith("parent.yaml") and cfg.source_of("n_heads").endswith("child.yaml")
    assert "inherit" not in cfg


def test_pixelnet_model_files_are_their_idnet_twin_plus_batch_and_optimizer():
    pixel = build_config(["PixelNet/sasrec.yaml", "overall/ViT.yaml"])
    ids = build_config(["IDNet/sasrec.yaml", "overall/ID.yaml"])
    assert pixel.source_of("n_layers") == "IDNet/sasrec.yaml"
    for key in ("n_layers", "n_heads", "embedding_size", "inner_size", "hidden_dropout_prob", "hidden_act"):
        assert pixel[key] == ids[key], key
    assert pixel["model"] == "MOSASRec" and pixel["train_batch_size"] == 16
    assert dict(pixel["optim_args"]) == {"modal_lr": 1e-4, "modal_decay": 0.0, "rec_lr": 1e-4, "rec_decay": 0.1}


def test_a_model_inherits_the_defaults_of_the_model_it_subclasses():
    """No copied defaults files: MOSASRec(PixelItems, SASRec) has SASRec's keys from SASRec's file; MOGRU4Rec's own
    file changes only embedding_size; FSASRec(SASRec) adds its feature keys to SASRec's."""
    from REC.model import get_model_class, list_models
    from REC.app.configure import build_config as build
    sas = build([], ["--model=SASRec"])
    mosas = build([], ["--model=MOSASRec"])
    for key in ("n_layers", "n_heads", "embedding_size", "inner_size", "hidden_act", "initializer_range"):
        assert mosas[key] == sas[key] and mosas.source_of(key) == sas.source_of(key) == "REC/model/IDNet/sasrec.yaml"
    gru, mogru = build([], ["--model=GRU4Rec"]), build([], ["--model=MOGRU4Rec"])
    assert (gru["embedding_size"], mogru["embedding_size"]) == (2048, 512)
    assert mogru["hidden_size"] == gru["hidden_size"] and mogru.source_of("hidden_size") == "REC/model/IDNet/gru4rec.yaml"
    assert mogru.source_of("embedding_size") == "REC/model/PixelNet/mogru4rec.yaml"
    fsas = build([], ["--model=FSASRec"])
    assert fsas["n_heads"] == sas["n_heads"] and fsas["feature_mode"] == "frozen"
    # every PixelNet form of an IDNet model that ships no file of its own has exactly its twin's defaults
    for name in list_models(family="PixelNet"):
        cls = get_model_class(name)
        assert cls.defaults_files[0].parent.name == "IDNet", (name, cls.defaults_files)


def test_inherit_cycle_and_missing_parent_are_named(tmp_path):
    write(tmp_path, "a.yaml", "inherit: b.yaml\n")
    write(tmp_path, "b.yaml", "inherit: a.yaml\n")
    with pytest.raises(ConfigError, match=r"'inherit' forms a cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        build_config([str(tmp_path / "a.yaml")])
    orphan = write(tmp_path, "orphan.yaml", "inherit: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere\.yaml' \(inherited by .*orphan\.yaml\) does not exist"):
        build_config([orphan])
    bad = write(tmp_path, "bad.yaml", "inherit: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: key 'inherit' = 3; expected the path of another YAML file"):
        build_config([bad])


def test_in_memory_layer_is_named_in_sources_and_errors():
    from REC.config import ConfigLayer
    cfg = build_config([ConfigLayer("my tool", {"model": "SASRec", "n_layers": 1}), "overall/ID.yaml"])
    assert cfg["n_layers"] == 1 and cfg.source_of("n_layers") == "my tool"
    with pytest.raises(ConfigError, match=r"^my tool: unknown key 'epoch' \(did you mean 'epochs'\?\)"):
        build_config([ConfigLayer("my tool", {"model": "SASRec", "epoch": 2})])


def test_a_config_without_model_serves_encoder_tools_only():
    cfg = build_config(["overall/RN50.yaml"], require_model=False)
    assert cfg["model"] is None and cfg["encoder"] == "clip_rn50"
    with pytest.raises(ConfigError, match="no model given"):
        build_config(["overall/RN50.yaml"])


def test_an_encoder_file_with_an_id_model_names_both():
    with pytest.raises(ConfigError, match=r"^overall/ViT\.yaml: sets image-encoder keys \['encoder', "
                                          r"'optim_args\.modal_lr', 'optim_args\.modal_decay'\], but model 'SASRec' "
                                          r"has no image encoder.*PixelNet/<model>\.yaml"):
        build_config(["IDNet/sasrec.yaml", "overall/ViT.yaml"])
    with pytest.raises(ConfigError, match=r"^command line: sets image-encoder keys \['encoder'\]"):
        build_config(BASE, ["--encoder=clip_vit_b32"])


def test_mixed_optim_args_says_which_forms_exist():
    with pytest.raises(ConfigError, match=r"optim_args.*expected numbers under exactly \['learning_rate', "
                                          r"'weight_decay'\] \(one setting.*cannot turn one form into the other"):
        build_config(BASE, ["--optim_args.rec_lr=1e-3"])


def test_encoder_modules_match_whole_module_names_and_the_old_key_says_so():
    from REC.trainer.optim import in_encoder
    assert in_encoder("item_embedding.visual_encoder.head.weight", ["visual_encoder"])
    assert in_encoder("module.item_embedding.visual_encoder.backbone.x", ["visual_encoder"])
    assert not in_encoder("visual_encoder_gate.weight", ["visual_encoder"])
    assert not in_encoder("item_embedding.weight", ["visual_encoder"])
    assert in_encoder("bias_projection.weight", ["projection", "bias_projection"])
    assert not in_encoder("region_projection.weight", ["projection", "bias_projection"])
    with pytest.raises(ConfigError, match=r"key 'encoder_param_prefix' is now encoder_modules"):
        build_config(BASE, ["--encoder_param_prefix=visual_encoder"])
