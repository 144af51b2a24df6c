"""SASRec specifics: the registry entry, the scoring shortcut, mixed precision (generic checks: test_models.py)."""
import pytest
import torch

from REC.data import EvalBatches, leave_one_out, load_interactions
from REC.model import create_model, get_model_class, list_models
from REC.model.base import DatasetInfo
from REC.app.configure import build_config

from .conftest import SMALL_MODEL, run_main, sasrec_args


def small_sasrec(seq_data, *overrides):
    cfg = build_config(["IDNet/sasrec.yaml", "overall/ID.yaml"],
                       [f"--data_path={seq_data}", "--dataset=Seq", *SMALL_MODEL, *overrides])
    split = leave_one_out(load_interactions(str(seq_data), "Seq"))
    torch.manual_seed(0)
    return cfg, split, create_model("SASRec", cfg, DatasetInfo(split.item_num, split.user_num))


def test_registry_finds_sasrec():
    assert "SASRec" in list_models("*sas*") and get_model_class("SASRec").family == "IDNet"


def test_last_position_shortcut_equals_the_full_encoder(seq_data):
    cfg, split, model = small_sasrec(seq_data)
    model.eval()
    batch = next(iter(EvalBatches(split.test, 10, 16)))
    torch.testing.assert_close(model.user_representations(batch), model.encode(batch["item_seq"])[:, -1],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(seq_data, tmp_path, precision):
    result = run_main(sasrec_args(seq_data, tmp_path, "--epochs=4", f"--precision={precision}",
                                  "--optim_args.learning_rate=3e-3", "--optim_args.weight_decay=0")).result
    assert result["precision"] == precision
    assert result["test"]["ndcg@10"] > 0.2  # popularity gets 0.148 on this log
